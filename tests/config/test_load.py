"""``flowdppo.config.load``: YAML + ``--set`` → typed, validated ``RunConfig``; errors name the
key, the value and the source."""

from __future__ import annotations

import dataclasses

import pytest

from flowdppo.config import ConfigError, RunConfig, dump_config, load_config, parse_override
from flowdppo.config.schema import RewardEntry


def _yaml(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    assert load_config() == RunConfig()


def test_unknown_key_names_the_key_and_the_file(tmp_path) -> None:
    path = _yaml(tmp_path, "loss:\n  name: flow_dppo\n  deltaa: 1.0e-5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "loss.deltaa" in msg and "delta" in msg  # also lists the valid keys


def test_unknown_section_and_unknown_override() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['optimizer'\]"):
        load_config(None, ["optimizer.lr=1"])
    with pytest.raises(ConfigError, match=r"^--set: unknown key\(s\) \['train.max_iter'\]"):
        load_config(None, ["train.max_iter=3"])
    with pytest.raises(ConfigError, match=r"^unknown key\(s\) \['train.max_iter'\]"):
        load_config(None, ["train.max_iter=3"], label="")  # the caller names the source
    with pytest.raises(ConfigError, match=r"^spec.yaml: unknown key"):
        load_config(None, ["train.max_iter=3"], label="spec.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sampling.group_size=four", "sampling.group_size: expected an integer, got 'four'"),
        ("sampling.group_size=2.5", "sampling.group_size: expected an integer, got 2.5"),
        ("sampling.group_size=true", "sampling.group_size: expected an integer, got True"),
        ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
        ("optim.lr=true", "optim.lr: expected float, got True"),
        ("model.full_finetune=1", "model.full_finetune: expected true or false, got 1"),
        ("data.train_prompts=3", "data.train_prompts: expected str, got 3"),
        ("sampling.train_pool=0.5", "sampling.train_pool: expected a list, got 0.5"),
        ("loss=flow_dppo", "loss: expected a mapping of LossConfig fields, got 'flow_dppo'"),
    ],
)
def test_wrong_type_names_key_and_value(override, message) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("loss.delta=0", "loss.delta: expected a number > 0, got 0.0"),
        ("loss.delta=-1e-6", "loss.delta: expected a number > 0, got -1e-06"),
        ("optim.ema_decay=1", "optim.ema_decay: expected a number in [0, 1), got 1.0"),
        (
            "sampling.group_size=1",
            "sampling.group_size: expected an int >= 2 (advantages need a group), got 1",
        ),
        (
            "sampling.train_steps=2",
            "sampling.train_steps: expected an int in [1, 1] (the pool has 1 steps of T=6)",
        ),
        (
            "sampling.sampler=ode",
            "sampling.sampler: expected one of ['cps', 'cps_peer_parity', 'dance_sde', 'flow_sde'], got 'ode'",
        ),
        (
            "sampling.eta=0",
            "sampling.eta: expected a number > 0 (η = 0 makes every step an ODE step, of std 0: "
            "no density to train), got 0.0",
        ),
        ("loss.clip_range=0", "loss.clip_range: expected null or a number > 0, got 0.0"),
        (
            "loss.name=ppo",
            "loss.name: expected one of ['flow_dppo', 'grpo_guard', 'ratio_clip'], got 'ppo'",
        ),
    ],
)
def test_bad_value_quotes_the_number(override, message) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["sampling.num_inference_steps=6", override])
    assert message in str(err.value)


def test_bad_value_in_a_file_names_the_file(tmp_path) -> None:
    path = _yaml(tmp_path, "loss:\n  delta: -1.0\n")
    with pytest.raises(
        ConfigError, match=rf"^{path}: loss.delta: expected a number > 0, got -1.0$"
    ):
        load_config(path)


def test_cps_pool_must_exclude_the_last_step() -> None:
    """CPS's std σ'·sin(ηπ/2) is 0 on the last step: nothing to train, NaN divergences."""
    with pytest.raises(
        ConfigError, match=r"sampling.train_pool: .* for sampler cps \(its last step has std 0\)"
    ):
        load_config(None, ["sampling.sampler=cps", "sampling.train_pool=[0.0,1.0]"])
    cfg = load_config(
        None,
        [
            "sampling.sampler=cps",
            "sampling.num_inference_steps=4",
            "sampling.train_pool=[0.0,0.75]",
            "sampling.train_steps=3",
        ],
    )
    assert cfg.sampling.train_pool == (0.0, 0.75)
    load_config(None, ["sampling.sampler=flow_sde", "sampling.train_pool=[0.0,1.0]"])  # fine there


def test_set_values_are_yaml_scalars() -> None:
    assert parse_override("loss.delta=1e-6") == ("loss.delta", "1e-6")  # YAML 1.1: a string ...
    cfg = load_config(
        None, ["loss.delta=1e-6", "optim.lr=1", "model.pretrained=null", "loss.adv_clip=~"]
    )
    assert cfg.loss.delta == 1e-6 and isinstance(cfg.loss.delta, float)  # ... converted here
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.model.pretrained is None and cfg.loss.adv_clip is None
    assert parse_override("data.train_prompts=a=b.txt") == (
        "data.train_prompts",
        "a=b.txt",
    )  # first '=' splits
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("loss.delta")
    with pytest.raises(ConfigError, match="cannot parse value") as err:
        parse_override("rewards=[{name: a")
    assert "\n" not in str(err.value) and "line 1, column" in str(err.value)


def test_set_overrides_the_file(tmp_path) -> None:
    path = _yaml(tmp_path, "loss:\n  delta: 1.0e-5\n  beta: 0.001\n")
    cfg = load_config(path, ["loss.delta=2e-6"])
    assert (cfg.loss.delta, cfg.loss.beta) == (2e-6, 0.001)


def test_choices_are_enforced() -> None:
    with pytest.raises(
        ConfigError, match=r"loss.reduction: expected one of \['mean', 'sum'\], got 'median'"
    ):
        load_config(None, ["loss.reduction=median"])
    assert load_config(None, ["loss.reduction=sum"]).loss.reduction == "sum"


def test_tuples() -> None:
    cfg = load_config(None, ["sampling.train_pool=[0.1, 0.6]", "optim.betas=[0.9, 0.99]"])
    assert cfg.sampling.train_pool == (0.1, 0.6) and cfg.optim.betas == (0.9, 0.99)
    with pytest.raises(ConfigError, match=r"optim.betas: expected a list of 2 values, got \[0.9\]"):
        load_config(None, ["optim.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"optim.betas\[1\]: expected a number, got 'x'"):
        load_config(None, ["optim.betas=[0.9, x]"])


def test_nested_rewards_list(tmp_path) -> None:
    path = _yaml(
        tmp_path,
        "rewards:\n  - name: shapes_tifa\n  - name: jpeg_compressibility\n    weight: 0.1\n    kwargs: {quality: 50}\n",
    )
    cfg = load_config(path)
    assert cfg.rewards == [
        RewardEntry("shapes_tifa", 1.0, {}),
        RewardEntry("jpeg_compressibility", 0.1, {"quality": 50}),
    ]
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['rewards\[1\].wieght'\]"):
        load_config(None, ["rewards=[{name: a}, {name: b, wieght: 2}]"])
    with pytest.raises(ConfigError, match=r"rewards\[0\].weight: expected a number, got 'heavy'"):
        load_config(None, ["rewards=[{name: a, weight: heavy}]"])
    with pytest.raises(ConfigError, match="rewards: expected at least one reward"):
        load_config(None, ["rewards=[]"])


def test_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_config(_yaml(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="invalid YAML at line 2, column 1: ") as err:
        load_config(_yaml(tmp_path, "loss: [1\n"))
    assert "\n" not in str(err.value)  # one line, without PyYAML's excerpt


def test_dump_and_load_round_trip(tmp_path) -> None:
    cfg = load_config(
        None,
        [
            "loss.delta=1e-6",
            "sampling.train_pool=[0.0,0.4]",
            "rewards=[{name: a, weight: 2, kwargs: {k: [1, 2]}}]",
            "model.lora_target_modules=[qkv]",
        ],
    )
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def _fields(cls: type, prefix: str = ""):
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _fields(tp, f"{f.name}.")
        elif f.name == "rewards":
            yield from _fields(RewardEntry, "rewards[].")
        else:
            yield f"{prefix}{f.name}", f


def test_every_schema_field_has_help_text() -> None:
    fields = dict(_fields(RunConfig))
    assert len(fields) > 40
    missing = sorted(k for k, f in fields.items() if len(f.metadata.get("help", "").strip()) < 5)
    assert not missing, f"fields without help: {missing}"


@pytest.mark.parametrize(
    ("name", "eps"), [("ratio_clip", 1e-4), ("grpo_guard", 2e-6), ("flow_dppo", None)]
)
def test_clip_range_defaults_to_the_losss_own_and_is_saved(tmp_path, name, eps) -> None:
    """loss.clip_range null: Flow-GRPO's 1e-4 for ratio_clip, GRPO-Guard's 2e-6 for grpo_guard
    (docs/algorithm.md §4), written into the config (so the saved run names it); a value given
    is kept; grpo_guard's RatioNorm scale reaches the loss as ``scale``."""
    cfg = load_config(None, [f"loss.name={name}"])
    assert cfg.loss.clip_range == eps
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml").loss.clip_range == eps
    assert load_config(None, [f"loss.name={name}", "loss.clip_range=3e-5"]).loss.clip_range == 3e-5
    if name == "grpo_guard":
        assert cfg.loss.hparams() == {"clip_range": 2e-6, "reduction": "mean", "scale": "term"}
        cfg = load_config(None, ["loss.name=grpo_guard", "loss.guard_scale=batch"])
        assert cfg.loss.hparams()["scale"] == "batch"


def test_dump_config_never_leaves_a_cut_file(tmp_path, monkeypatch) -> None:
    """A write that fails (or is killed) before it is complete leaves the previous config.yaml
    whole: a cut YAML file can still parse, with defaults in place of the lost keys."""
    from flowdppo.config import load as load_module

    path = tmp_path / "config.yaml"
    old = load_config(None, ["train.seed=5"])
    dump_config(old, path)
    before = path.read_text()

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(load_module.os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        dump_config(load_config(None, ["train.seed=7"]), path)
    assert path.read_text() == before and load_config(path).train.seed == 5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.height=0"], "model.height: expected null or a number of pixels >= 1, got 0"),
        (["model.true_cfg_scale=0.5"], "model.true_cfg_scale: expected a number >= 1 (1 = off)"),
        (
            ["model.family=sd3", "model.true_cfg_scale=2"],
            "model.true_cfg_scale: expected 1 for model.family sd3 (true CFG is FLUX.1's",
        ),
        (
            ["model.init_lora=x", "model.full_finetune=true"],
            "model.init_lora: expected null with model.full_finetune: true",
        ),
        (
            ["eval.skip_guidance_layers=[]"],
            "eval.skip_guidance_layers: expected null or a non-empty list of transformer block",
        ),
        (
            ["eval.skip_layer_guidance_start=0.5", "eval.skip_layer_guidance_stop=0.2"],
            "eval.skip_layer_guidance_start / _stop: expected 0 <= start < stop <= 1, got [0.5, 0.2]",
        ),
    ],
)
def test_pipeline_options_are_validated(overrides, message) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)
    assert (
        load_config(None, ["model.family=flux", "model.true_cfg_scale=2.5"]).model.true_cfg_scale
        == 2.5
    )
