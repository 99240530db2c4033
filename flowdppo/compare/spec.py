"""Experiment specs for ``flowdppo compare``: a grid of runs (methods × settings × seeds).

A spec is a YAML file (format: docs/compare.md)::

    question: "Does the exact-divergence mask reach a higher reward at a like KL?"
    base: null                 # a run config file (relative to the spec) or null = defaults
    set: {train.max_iters: 40} # dotted keys (as ``--set``) applied to every run
    seeds: [0, 1, 2]           # train.seed of each run; every cell runs every seed
    sweep: {}                  # dotted key -> values, crossed with every method
    methods:                   # name -> {set: {...}, sweep: {...}}
      dppo_kl: {set: {loss.name: flow_dppo}, sweep: {loss.delta: [1.0e-7, 1.0e-6]}}
    report: {...}              # what the report computes (``ReportSpec``)

Each (method, sweep point) is a *cell*; each cell runs every seed. Runs go seed by seed
(every cell's first seed, then the second, ...), so a grid stopped half-way is balanced. A run's config is the base,
then ``set``, then the method's ``set``, then the sweep point, then ``train.seed``; every run
config is built and validated when the spec is loaded, so a bad key or value is one clear line
naming the spec file, the run and the key before anything trains.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowdppo.config.load import config_to_dict, load_config, yaml_error_text
from flowdppo.config.schema import ConfigError, RunConfig

TOP_KEYS = {"question", "notes", "base", "set", "seeds", "sweep", "methods", "report"}
METHOD_KEYS = {"set", "sweep", "label"}
REPORT_KEYS = {
    "reward",
    "kl",
    "metrics",
    "reference",
    "kl_budgets",
    "reward_targets",
    "reward_gains",
    "binding_min_frac",
    "levels",
    "objectives",
    "collapse",
    "group_by",
    "ratio_rules",
}


class SpecError(ValueError):
    """A spec is invalid; the message names the file, the key and what was expected."""


@dataclass
class ReportSpec:
    """What the report computes. Metric names are ``metrics.jsonl`` keys (docs/metrics.md)."""

    reward: str = "eval/shapes_tifa"  # the y of the frontier and of the verdicts
    kl: str = "eval/kl_base"  # the x of the frontier
    metrics: list[str] = field(default_factory=lambda: ["eval/strict_overall"])
    reference: str | None = None  # the method every other is compared with (None: the first)
    kl_budgets: list[float] = field(default_factory=list)  # reward reached within KL ≤ b
    reward_targets: list[float] = field(default_factory=list)  # KL needed to first reach r
    reward_gains: list[float] = field(default_factory=list)  # KL needed to first reach base + g
    binding_min_frac: float = 0.01  # a run "binds" when ≥ this fraction of terms is blocked
    levels: dict[str, Any] = field(default_factory=dict)  # {x, levels, y}: y where x crosses
    objectives: list[str] = field(default_factory=list)  # multi-objective: rewards to balance
    collapse: dict[str, Any] = field(default_factory=dict)  # {metric, below: base|number}
    group_by: str | None = None  # a sweep key: tables and plots per value of it
    ratio_rules: dict[str, float] = field(default_factory=dict)  # {delta, clip_range}: diagnostic


@dataclass
class Run:
    """One run of the grid: its directory name, cell, seed and full validated config."""

    name: str
    method: str
    cell: str
    seed: int
    point: dict[str, Any]  # the sweep values of its cell
    overrides: dict[str, Any]  # every dotted key this spec sets for it (after the base file)
    config: RunConfig

    def config_dict(self) -> dict[str, Any]:
        return config_to_dict(self.config)


@dataclass
class Spec:
    path: Path
    name: str
    question: str
    notes: str
    base: Path | None
    seeds: list[int]
    methods: dict[str, dict[str, Any]]
    report: ReportSpec
    runs: list[Run]
    raw: dict[str, Any]

    @property
    def cells(self) -> list[str]:
        return list(dict.fromkeys(r.cell for r in self.runs))

    def digest(self) -> str:
        """A hash of what the runs will do: every run's name and resolved config."""
        blob = json.dumps({r.name: r.config_dict() for r in self.runs}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def label(self, method: str) -> str:
        return str(self.methods[method].get("label", method))


def _fail(path: Path, key: str, expected: str, got: Any) -> None:
    raise SpecError(f"{path}: {key}: expected {expected}, got {got!r}")


def _mapping(path: Path, key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        _fail(path, key, "a mapping of dotted config keys to values", value)
    return value


def _sweep(path: Path, key: str, value: Any) -> dict[str, list[Any]]:
    sweep = _mapping(path, key, value)
    for k, vals in sweep.items():
        if not isinstance(vals, list) or not vals:
            _fail(path, f"{key}.{k}", "a non-empty list of values", vals)
    return sweep


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).replace("/", "-").replace(" ", "")


def _cell_name(method: str, point: dict[str, Any]) -> str:
    parts = [method] + [f"{k.split('.')[-1]}={_fmt(v)}" for k, v in point.items()]
    return "__".join(parts)


def _report(path: Path, raw: Any) -> ReportSpec:
    data = _mapping(path, "report", raw)
    unknown = sorted(set(data) - REPORT_KEYS)
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {unknown} in report; valid: {sorted(REPORT_KEYS)}")
    rep = ReportSpec(**data)
    if not isinstance(rep.reward, str) or not isinstance(rep.kl, str):
        _fail(path, "report.reward / report.kl", "metric names", (rep.reward, rep.kl))
    for key in ("kl_budgets", "reward_targets", "reward_gains"):
        vals = getattr(rep, key)
        if not isinstance(vals, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals
        ):
            _fail(path, f"report.{key}", "a list of numbers", vals)
    if not 0 < rep.binding_min_frac < 1:
        _fail(path, "report.binding_min_frac", "a number in (0, 1)", rep.binding_min_frac)
    if rep.levels and not ({"x", "y"} <= set(rep.levels) and {"levels", "gains"} & set(rep.levels)):
        _fail(path, "report.levels", "a mapping with x, y and levels or gains", rep.levels)
    if rep.ratio_rules and not (
        set(rep.ratio_rules) == {"delta", "clip_range"}
        and all(isinstance(v, (int, float)) and v > 0 for v in rep.ratio_rules.values())
    ):
        _fail(path, "report.ratio_rules", "{delta: > 0, clip_range: > 0}", rep.ratio_rules)
    if rep.collapse and "metric" not in rep.collapse:
        _fail(path, "report.collapse", "a mapping with metric and below", rep.collapse)
    return rep


def load_spec(path: str | Path, seeds: list[int] | None = None) -> Spec:
    """Read, expand and validate a spec; every run's config is built and validated here.
    ``seeds`` (``flowdppo compare --seeds``) replaces the spec's own seed list."""
    path = Path(path)
    if path.is_dir():
        raise SpecError(f"{path}: is a directory; expected a spec YAML file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"spec file {path} does not exist") from None
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: invalid YAML at {yaml_error_text(err)}") from None
    if not isinstance(raw, dict):
        _fail(path, "the top level", "a mapping", type(raw).__name__)
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise SpecError(f"{path}: unknown key(s) {unknown}; valid keys: {sorted(TOP_KEYS)}")
    if seeds is not None:
        raw["seeds"] = list(seeds)
    seeds = raw.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        _fail(path, "seeds", "a non-empty list of distinct integers", seeds)
    methods = raw.get("methods")
    if not isinstance(methods, dict) or not methods:
        _fail(path, "methods", "a non-empty mapping of method names to {set, sweep}", methods)
    base = raw.get("base")
    base_path = None
    if base is not None:
        if not isinstance(base, str):
            _fail(path, "base", "a config file path or null", base)
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            _fail(path, "base", "an existing config file (relative to the spec)", base)
    common = _mapping(path, "set", raw.get("set"))
    common_sweep = _sweep(path, "sweep", raw.get("sweep"))
    for text_key in ("question", "notes"):
        if not isinstance(raw.get(text_key, ""), str):
            _fail(path, text_key, "text", raw.get(text_key))
    runs: list[Run] = []
    for method, body in methods.items():
        body = _mapping(path, f"methods.{method}", body)
        bad = sorted(set(body) - METHOD_KEYS)
        if bad:
            raise SpecError(
                f"{path}: unknown key(s) {bad} in methods.{method}; valid: {sorted(METHOD_KEYS)}"
            )
        mset = _mapping(path, f"methods.{method}.set", body.get("set"))
        sweep = {**common_sweep, **_sweep(path, f"methods.{method}.sweep", body.get("sweep"))}
        keys = list(sweep)
        for values in itertools.product(*(sweep[k] for k in keys)):
            point = dict(zip(keys, values, strict=True))
            cell = _cell_name(method, point)
            for seed in seeds:
                over = {**common, **mset, **point, "train.seed": seed}
                try:
                    cfg = load_config(
                        base_path,
                        [f"{k}={json.dumps(v)}" for k, v in over.items()],
                        label=str(base) if base_path is not None else "",
                    )
                except ConfigError as err:
                    raise SpecError(f"{path}: run {cell} seed {seed}: {err}") from None
                runs.append(Run(f"{cell}__s{seed}", method, cell, seed, point, over, cfg))
    # Seed-major order: a grid stopped half-way has every cell at the first seeds.
    runs.sort(key=lambda r: seeds.index(r.seed))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise SpecError(f"{path}: two runs share a name; make method names or sweep values differ")
    report = _report(path, raw.get("report"))
    if report.reference is not None and report.reference not in methods:
        _fail(path, "report.reference", f"one of the methods {list(methods)}", report.reference)
    if report.group_by is not None and report.group_by not in common_sweep:
        _fail(
            path,
            "report.group_by",
            f"a key of the top-level sweep {list(common_sweep)}",
            report.group_by,
        )
    return Spec(
        path=path,
        name=path.stem,
        question=str(raw.get("question", "")),
        notes=str(raw.get("notes", "")),
        base=base_path,
        seeds=seeds,
        methods=methods,
        report=report,
        runs=runs,
        raw=raw,
    )


def changed_keys(old: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[str]:
    """Human-readable differences between two {run name: config dict} maps."""
    out = [f"run {n} removed" for n in sorted(set(old) - set(new))]
    out += [f"run {n} added" for n in sorted(set(new) - set(old))]
    for n in sorted(set(old) & set(new)):
        out += [f"{n}: {k}" for k in _diff_dict(old[n], new[n])]
    return out


def _diff_dict(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff_dict(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')} {a!r} -> {b!r}"]
