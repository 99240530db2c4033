"""``flowdppo compare``: spec validation, a tiny 2-run grid end to end through the CLI, skipping
finished runs, resuming an interrupted run (the result equals an uninterrupted one), starting over
a run killed before its first checkpoint, refusing a changed spec, and ``--report-only``; and the
report's arithmetic (budgets, crossings, Welch's test, verdicts) against independent values."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from trainer.tiny import build_tiny_checkpoint, cli, register_test_rewards

from flowdppo.compare.report import budget_value, crossing, describe, verdict, welch
from flowdppo.compare.spec import SpecError, load_spec


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    register_test_rewards()
    return build_tiny_checkpoint(tmp_path_factory.mktemp("compare") / "tiny.safetensors")


def _tiny_set(ckpt: Path) -> dict:
    return {
        "model.pretrained": str(ckpt),
        "model.lora_rank": 2,
        "model.lora_alpha": 4,
        "sampling.num_inference_steps": 4,
        "sampling.train_pool": [0.0, 0.5],
        "sampling.train_steps": 1,
        "sampling.prompts_per_iter": 2,
        "sampling.group_size": 2,
        "optim.micro_batch_size": 4,
        "optim.lr": 1.0e-2,
        "optim.updates_per_iter": 2,
        "eval.every": 1,
        "eval.per_category": 1,
        "eval.num_inference_steps": 3,
        "eval.kl_samples": 2,
        "data.eval_prompts": "shapes:test:counting,colors",
        "sampling.untrained_precision": "full",
        "train.max_iters": 2,
        "train.save_every": 1,
        "train.sample_every": 100,
        # Shapes' rewards are 0 on every image of a random tiny model: no signal, no update.
        "rewards": [{"name": "jpeg_incompressibility"}],
    }


def _write_spec(path: Path, ckpt: Path, **changes) -> Path:
    spec = {
        "question": "a tiny grid",
        "set": _tiny_set(ckpt),
        "seeds": [0],
        "methods": {
            "dppo": {"set": {"loss.name": "flow_dppo", "loss.delta": 1.0e-9}},
            "clip": {"set": {"loss.name": "ratio_clip", "loss.clip_range": 1.0e-7}},
        },
        "report": {
            "reward": "eval/jpeg_incompressibility",
            "kl_budgets": [1.0],
            "reward_gains": [0.0],
            "reference": "dppo",
        },
    }
    spec.update(changes)
    path.write_text(yaml.safe_dump(spec))
    return path


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, "unknown key(s) ['colour']"),
        ({"methods": {}}, "methods: expected a non-empty mapping"),
        ({"seeds": []}, "seeds: expected a non-empty list of distinct integers"),
        ({"seeds": [0, 0]}, "seeds: expected a non-empty list of distinct integers"),
        ({"seeds": ["a"]}, "seeds: expected"),
        ({"methods": {"m": {"sett": {}}}}, "unknown key(s) ['sett'] in methods.m"),
        ({"methods": {"m": {"set": {"loss.delta": -1.0}}}}, "run m seed 0: loss.delta"),
        ({"methods": {"m": {"set": {"loss.dleta": 1.0}}}}, "loss.dleta"),
        ({"methods": {"m": {"set": {"optim.lr": "fast"}}}}, "optim.lr: expected a number"),
        ({"methods": {"m": {"sweep": {"loss.delta": 1.0}}}}, "methods.m.sweep.loss.delta"),
        ({"sweep": {"loss.delta": []}}, "sweep.loss.delta: expected a non-empty list"),
        ({"report": {"rewrd": "x"}}, "unknown key(s) ['rewrd'] in report"),
        ({"report": {"reference": "nope"}}, "report.reference: expected one of the methods"),
        ({"report": {"kl_budgets": "1e-5"}}, "report.kl_budgets: expected a list of numbers"),
        ({"base": "missing.yaml"}, "base: expected an existing config file"),
    ],
)
def test_a_bad_spec_is_one_line_naming_the_file_and_key(tmp_path, ckpt, change, message):
    path = _write_spec(tmp_path / "bad.yaml", ckpt, **change)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_a_spec_that_is_not_yaml_is_one_line_with_its_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("methods:\n  a: {set: {loss.delta: 1e-6}\n")
    with pytest.raises(SpecError, match=r"broken.yaml: invalid YAML at line 3, column 1: ") as err:
        load_spec(path)
    assert "\n" not in str(err.value)


def test_spec_errors_reach_the_user_as_one_line_and_exit_2(tmp_path, ckpt):
    path = _write_spec(tmp_path / "bad.yaml", ckpt, seeds=[])
    proc = cli("compare", str(path), "--out", str(tmp_path / "g"), check=False)
    assert proc.returncode == 2
    assert "seeds: expected" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "notyaml.yaml").write_bytes(b"\xff\xfe: [")
    proc = cli("compare", str(tmp_path / "notyaml.yaml"), "--out", str(tmp_path / "g"), check=False)
    assert proc.returncode == 2 and "not UTF-8" in proc.stderr


def test_the_grid_is_methods_times_sweeps_times_seeds_in_seed_major_order(tmp_path, ckpt):
    path = _write_spec(
        tmp_path / "s.yaml",
        ckpt,
        seeds=[3, 1],
        sweep={"optim.updates_per_iter": [1, 2]},
        methods={
            "a": {"set": {"loss.name": "flow_dppo"}, "sweep": {"loss.delta": [1.0e-6, 1.0e-5]}},
            "b": {"set": {"loss.name": "ratio_clip"}},
        },
        report={},
    )
    spec = load_spec(path)
    assert len(spec.runs) == (2 * 2 + 2) * 2
    assert [r.seed for r in spec.runs] == [3] * 6 + [1] * 6
    first = spec.runs[0]
    assert first.name == "a__updates_per_iter=1__delta=1e-06__s3"
    assert first.config.loss.delta == 1e-6 and first.config.optim.updates_per_iter == 1
    assert first.config.train.seed == 3 and first.config.train.max_iters == 2
    assert {r.config.loss.name for r in spec.runs if r.method == "b"} == {"ratio_clip"}


# -- end to end --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grid(tmp_path_factory, ckpt) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("grid")
    spec = _write_spec(root / "tiny.yaml", ckpt)
    out = root / "out"
    proc = cli("compare", str(spec), "--out", str(out), "--jobs", "2", "--no-progress", timeout=300)
    assert "2/2 runs done, 0 failed" in proc.stderr
    return spec, out


def test_a_grid_writes_run_directories_report_plots_and_summary(grid):
    spec, out = grid
    for name in ("dppo__s0", "clip__s0"):
        run = out / "runs" / name
        assert (run / "DONE").exists() and (run / "config.yaml").exists()
        rows = _rows(run)
        assert [r["iter"] for r in rows if r["kind"] == "train"] == [1, 2]
        evals = [r for r in rows if r["kind"] == "eval"]
        assert [r["iter"] for r in evals] == [0, 1, 2]
        assert evals[0]["eval/kl_base"] == 0.0  # the base model against itself
        assert evals[-1]["eval/kl_base"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True
    assert set(summary["cells"]) == {"dppo", "clip"}
    assert summary["environment"]["torch"] and summary["spec_digest"] == load_spec(spec).digest()
    for p in ("frontier.png", "curves.png"):
        assert (out / p).stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "## Verdicts" in report and "What the trust region did" in report
    # The thresholds are far below any move with lr 1e-2: both constraints bind.
    assert all(c["binds"] for c in summary["cells"].values())
    # A cell's number in the report is the mean of its runs' values in summary.json.
    key = "final/eval/jpeg_incompressibility"
    final = summary["runs"]["dppo__s0"][key]
    assert summary["cells"]["dppo"][key]["mean"] == pytest.approx(final)


def test_rerunning_a_finished_grid_trains_nothing(grid):
    spec, out = grid
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.jsonl")}
    proc = cli("compare", str(spec), "--out", str(out), "--no-progress")
    assert "2/2 runs done" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.jsonl")} == before


def test_report_only_rebuilds_the_report_without_training(grid):
    _, out = grid
    (out / "report.md").unlink()
    (out / "summary.json").unlink()
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.jsonl")}
    proc = cli("compare", "--report-only", str(out))
    assert "report:" in proc.stdout and (out / "report.md").exists()
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.jsonl")} == before
    proc = cli("compare", "--report-only", str(out / "runs"), check=False)
    assert proc.returncode == 2 and "no spec.yaml there" in proc.stderr


def test_a_changed_spec_is_refused_naming_what_changed_unless_allowed(grid, ckpt, tmp_path):
    _spec, out = grid
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    changed = _write_spec(
        tmp_path / "tiny.yaml",
        ckpt,
        methods={
            "dppo": {"set": {"loss.name": "flow_dppo", "loss.delta": 1.0e-8}},
            "clip": {"set": {"loss.name": "ratio_clip", "loss.clip_range": 1.0e-7}},
        },
    )
    proc = cli("compare", str(changed), "--out", str(copy), "--no-progress", check=False)
    assert proc.returncode == 2
    assert "the spec changed" in proc.stderr and "loss.delta 1e-09 -> 1e-08" in proc.stderr
    proc = cli("compare", str(changed), "--out", str(copy), "--no-progress", "--allow-changed")
    assert "2/2 runs done" in proc.stderr


def test_a_grid_started_before_a_config_key_existed_is_not_a_changed_spec(grid, tmp_path):
    """grid.json written by an older flowdppo lacks the keys added since (here optim.epochs and
    the whole alarms section): at their defaults they are no change; at another value they are."""
    spec, out = grid
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    lock = json.loads((copy / "grid.json").read_text())
    for c in lock["configs"].values():
        del c["optim"]["epochs"], c["alarms"]
    (copy / "grid.json").write_text(json.dumps(lock))
    proc = cli("compare", str(spec), "--out", str(copy), "--no-progress")
    assert "2/2 runs done" in proc.stderr and "changed" not in proc.stderr
    for c in lock["configs"].values():
        c["optim"]["updates_per_iter"] += 1  # present and different: a change
    (copy / "grid.json").write_text(json.dumps(lock))
    proc = cli("compare", str(spec), "--out", str(copy), "--no-progress", check=False)
    assert proc.returncode == 2 and "optim.updates_per_iter" in proc.stderr


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(grid, tmp_path):
    """A run stopped after iteration 1 (its checkpoint saved) is resumed by compare and ends as
    the grid's uninterrupted run did; a run killed before any checkpoint is started over."""
    spec, out = grid
    part = tmp_path / "out"
    load = load_spec(spec)
    run = next(r for r in load.runs if r.name == "dppo__s0")
    cfg = tmp_path / "dppo.yaml"
    cfg.write_text(yaml.safe_dump(run.config_dict()))
    cli("train", str(cfg), "--out", str(part / "runs" / "dppo__s0"), "--max-iters", "1")
    stale = part / "runs" / "clip__s0"  # killed before its first checkpoint
    stale.mkdir(parents=True)
    (stale / "metrics.jsonl").write_text('{"iter": 0, "kind": "eval"}\n')
    proc = cli("compare", str(spec), "--out", str(part), "--no-progress", timeout=300)
    assert "2/2 runs done" in proc.stderr
    for name in ("dppo__s0", "clip__s0"):
        got, want = _rows(part / "runs" / name), _rows(out / "runs" / name)
        assert [(r["kind"], r["iter"]) for r in got] == [(r["kind"], r["iter"]) for r in want]
        for g, w in zip(got, want, strict=True):
            for k, v in w.items():
                if k.startswith("time/") or not isinstance(v, float):
                    continue
                assert g[k] == pytest.approx(v, rel=1e-6, abs=1e-9), (name, g["iter"], k)


# -- the report's arithmetic ----------------------------------------------------------------------
def test_budget_value_is_the_best_reward_within_the_kl_budget():
    kl = np.array([0.0, 1.0, 3.0])
    rw = np.array([0.5, 0.7, 0.6])
    assert budget_value(kl, rw, 0.5) == pytest.approx(0.6)  # interpolated at the crossing
    assert budget_value(kl, rw, 2.0) == pytest.approx(0.7)
    assert budget_value(kl, rw, 10.0) == pytest.approx(0.7)
    assert math.isnan(budget_value(np.array([1.0]), np.array([0.3]), 0.5))


def test_crossing_is_the_first_interpolated_reach():
    it = np.array([0.0, 10.0, 20.0])
    assert crossing(it, np.array([0.2, 0.4, 0.8]), 0.6) == pytest.approx(15.0)
    assert crossing(it, np.array([0.2, 0.4, 0.8]), 0.1) == 0.0
    assert math.isnan(crossing(it, np.array([0.2, 0.4, 0.3]), 0.5))


def test_welch_matches_scipy_and_the_interval_matches_the_p_value():
    from scipy import stats

    a, b = [0.61, 0.64, 0.66, 0.60], [0.55, 0.58, 0.52]
    t = welch(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert t["p"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert t["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert (t["lo"] > 0) == (ref.pvalue < 0.05)
    d = describe([1.0, 2.0, 3.0])
    assert d["mean"] == 2.0 and d["std"] == 1.0
    assert d["ci95"] == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3))


def test_verdicts_never_call_a_non_binding_comparison_a_win():
    win = {"diff": 0.1, "lo": 0.05, "hi": 0.15}
    tie = {"diff": 0.01, "lo": -0.05, "hi": 0.07}
    assert verdict(win, True, False) == "higher"
    assert verdict({"diff": -0.1, "lo": -0.15, "hi": -0.05}, True, True) == "lower"
    assert verdict(tie, True, True) == "not distinguishable"
    assert verdict(win, False, False) == "not binding"


def test_a_second_compare_on_a_running_grid_is_refused(tmp_path, ckpt):
    import fcntl

    from flowdppo.compare.runner import run_grid

    spec = load_spec(_write_spec(tmp_path / "s.yaml", ckpt))
    out = tmp_path / "out"
    out.mkdir()
    with (out / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SpecError, match="another flowdppo compare is running"):
            run_grid(spec, out, progress=False)
    assert not (out / "runs").exists()  # refused before anything started


def test_a_report_with_ratio_rules_tabulates_the_sampled_terms(grid, tmp_path):
    _spec, out = grid
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    spec = yaml.safe_load((copy / "spec.yaml").read_text())
    spec["report"]["ratio_rules"] = {"delta": 1e-9, "clip_range": 1e-7}
    (copy / "spec.yaml").write_text(yaml.safe_dump(spec))
    cli("compare", "--report-only", str(copy))
    summary = json.loads((copy / "summary.json").read_text())
    rows = summary["ratio_noise"]
    assert set(rows) == {"dppo", "clip"}
    # Per iteration, each of the 2 updates gives its first micro-batch's terms, at most
    # ceil(32 / 2): here all of its 2 (4 samples × 1 trained step, halved); 2 iterations, 1 seed.
    assert rows["dppo"][-1]["step"] == "all" and rows["dppo"][-1]["terms"] == 2 * 2 * 2
    assert (copy / "ratio_kl.png").stat().st_size > 1000
    assert "The ratio against the exact divergence" in (copy / "report.md").read_text()
    spec["report"]["ratio_rules"] = {"delta": 1e-9}
    (copy / "spec.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match=r"report\.ratio_rules"):
        load_spec(copy / "spec.yaml")


def test_a_report_with_levels_reads_measures_at_a_like_gain_and_draws_them(grid, tmp_path):
    """``levels``: y read where x first reaches base + gain, a verdict row per such measure, and
    levels.png; a gain no run reaches is missing (–), never 0."""
    _spec, out = grid
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    spec = yaml.safe_load((copy / "spec.yaml").read_text())
    x = "eval/jpeg_incompressibility"
    spec["report"]["levels"] = {"x": x, "gains": [0.0, 1.0e9], "y": ["eval/kl_base"]}
    (copy / "spec.yaml").write_text(yaml.safe_dump(spec))
    cli("compare", "--report-only", str(copy))
    summary = json.loads((copy / "summary.json").read_text())
    at0, never = (f"eval/kl_base@{x}>=base+{g:g}" for g in (0.0, 1.0e9))
    for name in ("dppo__s0", "clip__s0"):
        run = summary["runs"][name]
        assert run[at0] == 0.0  # x is at base + 0 at iteration 0, where the KL to the base is 0
        assert run[never] is None  # NaN in the report, null in JSON
    assert {v["measure"] for v in summary["verdicts"]} >= {at0}
    assert (copy / "levels.png").stat().st_size > 1000 and "levels.png" in summary["plots"]


def test_a_run_still_going_is_left_out_of_the_cells(tmp_path, ckpt):
    from flowdppo.compare.report import collect

    spec = load_spec(_write_spec(tmp_path / "s.yaml", ckpt))  # train.max_iters = 2
    for name, last in (("dppo__s0", 2), ("clip__s0", 1)):
        run = tmp_path / "out" / "runs" / name
        run.mkdir(parents=True)
        rows = [
            {"kind": "eval", "iter": i, "eval/jpeg_incompressibility": 0.1} for i in range(last + 1)
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert list(collect(spec, tmp_path / "out")) == ["dppo"]


def test_other_seeds_replace_the_specs_and_stay_with_the_grid(tmp_path, ckpt):
    """``--seeds``: the check with other seeds, without editing the spec; the grid keeps them, so
    ``--report-only`` rebuilds the same report."""
    methods = {"dppo": {"set": {"loss.name": "flow_dppo", "loss.delta": 1.0e-9}}}
    report = {"reward": "eval/jpeg_incompressibility"}
    path = _write_spec(tmp_path / "s.yaml", ckpt, methods=methods, report=report)
    assert [r.name for r in load_spec(path, seeds=[7, 4]).runs] == ["dppo__s7", "dppo__s4"]
    with pytest.raises(SpecError, match="seeds: expected a non-empty list of distinct"):
        load_spec(path, seeds=[7, 7])
    out = tmp_path / "out"
    proc = cli("compare", str(path), "--out", str(out), "--seeds", "5", "--no-progress")
    assert "1/1 runs done" in proc.stderr
    assert [p.name for p in (out / "runs").iterdir()] == ["dppo__s5"]
    assert json.loads((out / "grid.json").read_text())["seeds"] == [5]
    report = (out / "report.md").read_text()
    assert "seeds [5]" in report and "--seeds 5" in report
    (out / "summary.json").unlink()
    cli("compare", "--report-only", str(out))
    assert list(json.loads((out / "summary.json").read_text())["runs"]) == ["dppo__s5"]
    # A report metric no run logs (Shapes' reward, for runs trained and evaluated on JPEG size)
    # is one line naming it and what the runs do log, not a plotting traceback.
    _write_spec(out / "spec.yaml", ckpt, methods=methods, report={"reward": "eval/shapes_tifa"})
    proc = cli("compare", "--report-only", str(out), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "['eval/shapes_tifa'] in no run's evaluation lines" in proc.stderr
    assert "eval/jpeg_incompressibility" in proc.stderr


SHIPPED = sorted((Path(__file__).parents[2] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_spec_validates_fixes_precision_and_has_three_seeds(path):
    """What docs/compare.md promises of a shipped spec: it loads, names its command and report,
    fixes the rollout precision (no hardware-chosen ``auto``), and runs ≥ 3 seeds per cell with
    the same seeds and the same number of samples drawn for every method."""
    spec = load_spec(path)
    text = path.read_text()
    assert f"--out runs/compare/{path.stem}" in text and f"docs/results/{path.stem}/" in text
    # default_recipe reproduces the one README run (seed 0) of each loss: what its trust region
    # did, not a comparison, so one seed.
    assert spec.question and len(spec.seeds) >= (1 if path.stem == "default_recipe" else 3)
    assert {r.config.sampling.untrained_precision for r in spec.runs} == {"full"}
    drawn = {
        (r.config.train.max_iters, r.config.sampling.prompts_per_iter, r.config.sampling.group_size)
        for r in spec.runs
    }
    assert len(drawn) == 1, drawn


def test_verdicts_per_group_value_and_for_measures_read_at_a_like_gain():
    """With ``group_by``, each value of the key gets its own comparison; a ``levels`` measure
    (read where the trained categories reached base + gain) is a headline measure too."""
    from types import SimpleNamespace as NS

    from flowdppo.compare.report import _verdicts

    level = "x@y>=base+0.1"
    rep = NS(reward="r", reference="a", objectives=[], group_by="optim.updates_per_iter")
    spec = NS(report=rep, methods={"a": {}, "b": {}})
    vals = {  # (method, N): final reward per seed, level measure per seed
        ("a", 1): ([0.9, 0.91, 0.92], [1.0, 2.0, 3.0]),
        ("b", 1): ([0.5, 0.51, 0.52], [1.0, 2.0, 3.0]),
        ("a", 8): ([0.5, 0.6, 0.7], [1.0, 2.0, 3.0]),
        ("b", 8): ([0.6, 0.5, 0.7], [5.0, 6.0, 7.0]),
    }
    table, per_run, cells = {}, {}, {}
    for (m, n), (final, lv) in vals.items():
        cell = f"{m}__N={n}"
        runs = [NS(run=NS(name=f"{cell}__s{i}")) for i in range(3)]
        cells[cell] = runs
        for d, f, x in zip(runs, final, lv, strict=True):
            per_run[d.run.name] = {"final/r": f, level: x}
        table[cell] = {
            "method": m,
            "point": {"optim.updates_per_iter": n},
            "binds": True,
            "final/r": describe(final),
            level: describe(lv),
        }
    out = {(v["measure"], v["verdict"]) for v in _verdicts(spec, table, per_run, cells, [level])}
    assert out == {
        ("final/r (optim.updates_per_iter = 1)", "higher"),
        ("final/r (optim.updates_per_iter = 8)", "not distinguishable"),
        (f"{level} (optim.updates_per_iter = 1)", "not distinguishable"),
        (f"{level} (optim.updates_per_iter = 8)", "lower"),
    }
