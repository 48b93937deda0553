"""Config: YAML round trip, unknown keys, `--set` overrides, type coercion, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from asrkd.config import (
    Config,
    ConfigError,
    DistillConfig,
    apply_overrides,
    from_dict,
    load_config,
    replace,
    save_config,
    to_dict,
)

KD = ["teacher.path=/models/teacher.safetensors"]


def test_defaults_load_from_nothing() -> None:
    assert load_config(None) == Config()


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        KD
        + [
            "distill.strategy=logit+hidden",
            "distill.weight=0.3",
            "distill.hidden_layer_map=[[0, 1], [1, 3]]",
            "data.test_cuts=[a.jsonl.gz, b.jsonl.gz]",
            "train.lr=3e-3",
            "train.progress=false",
            "model.preset=demo-student",
        ],
    )
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert again.distill.hidden_layer_map == ((0, 1), (1, 3))
    assert again.data.test_cuts == ("a.jsonl.gz", "b.jsonl.gz")
    assert again.train.lr == 3e-3 and again.train.progress is False
    assert yaml.safe_load(path.read_text())["distill"]["weight"] == 0.3  # plain YAML


def test_partial_yaml_keeps_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 7\nmodel: {}\n")
    cfg = load_config(path, ["train.seed=3"])
    assert cfg.train.max_steps == 7 and cfg.train.seed == 3
    assert cfg.model == Config().model and cfg.data == Config().data


@pytest.mark.parametrize(
    ("text", "key"),
    [("trian:\n  max_steps: 3\n", "config: trian"), ("train:\n  max_step: 3\n", "train: max_step")],
)
def test_unknown_key_is_an_error(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"unknown key\\(s\\) in {key}"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["distill.wieght=0.1"])


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="train must be a mapping"):
        load_config(None, ["train=5"])


def test_override_parsing() -> None:
    data = apply_overrides({}, ["a.b=1", "a.c=x=y", "d=[1, 2]", "e.f=", "a.g=null", "h=true"])
    assert data == {"a": {"b": 1, "c": "x=y", "g": None}, "d": [1, 2], "e": {"f": ""}, "h": True}
    for bad in ("novalue", "=3"):
        with pytest.raises(ConfigError, match="section.key=value"):
            apply_overrides({}, [bad])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"train": {"seed": 1}}, ["train.seed.x=2"])


def test_override_coercion() -> None:
    cfg = load_config(
        None,
        [
            "train.lr=1",
            "train.max_steps=20.0",
            "train.progress=no",
            "teacher.path=123",
            "data.dev_cuts=null",
        ],
    )
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 20 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.progress is False
    assert cfg.teacher.path == "123" and cfg.data.dev_cuts == ""


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_steps=abc", "train.max_steps must be int"),
        ("train.max_steps=1.5", "train.max_steps must be int"),
        ("train.lr=fast", "train.lr must be float"),
        ("train.progress=maybe", "train.progress must be bool"),
        ("data.test_cuts=5", "data.test_cuts must be a list"),
        ("distill.hidden_layer_map=[[0]]", "must have 2 items"),
        ("distill.hidden_layer_map=[[0, x]]", "must be int"),
    ],
)
def test_type_errors_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, KD + [override])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (KD + ["distill.strategy=bogus"], "distill.strategy='bogus' is not one of"),
        (KD + ["distill.strategy=logit+bogus"], "'bogus'"),
        (KD + ["distill.strategy=logit", "distill.temperature=0"], "temperature must be positive"),
        (KD + ["distill.temperature=-1"], "temperature must be positive"),
        (["distill.strategy=logit"], "needs a teacher: set teacher.path"),
        (["distill.strategy=hidden"], "teacher.path"),
        (["distill.init_from_teacher=true"], "teacher.path"),
        (KD + ["distill.strategy=logit+sequence", "distill.weight=0.6"], "exceed 1"),
        (KD + ["distill.weight=1.5"], r"\[0, 1\]"),
        (["model.preset=huge"], "model.preset='huge'"),
        (["teacher.kind=kaldi"], "teacher.kind"),
        (["teacher.cache_topk=-1"], "cache_topk"),
        (["data.labelled_fraction=0"], "labelled_fraction"),
        (["data.unlabelled_cuts=x.jsonl.gz"], "only used by a distillation strategy"),
        (["train.lr=0"], "train.lr must be positive"),
        (["train.max_steps=0"], "max_steps"),
    ],
)
def test_validation_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_replace_revalidates_and_keeps_the_rest() -> None:
    cfg = load_config(None, KD + ["distill.strategy=logit", "train.seed=4"])
    new = replace(cfg, ["distill.weight=0.5"])
    assert new.distill.weight == 0.5 and new.train.seed == 4 and cfg.distill.weight == 0.02
    with pytest.raises(ConfigError, match="teacher.path"):
        replace(cfg, ["teacher.path="])


def test_from_dict_of_a_section_and_to_dict_is_plain() -> None:
    d = DistillConfig(strategy="hidden", hidden_layer_map=((0, 1),))
    plain = to_dict(d)
    assert plain["hidden_layer_map"] == [[0, 1]]
    assert from_dict(DistillConfig, plain) == d
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(DistillConfig, {**plain, "extra": 1})
