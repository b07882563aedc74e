"""The typed config loader: YAML into dataclasses, overrides, and one-line errors naming the key and file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from omegaconf import MISSING

from apps.common.config import ConfigError, load_config, to_yaml


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule={self.schedule!r} is not one of cosine, linear")


@dataclass
class ToyConfig:
    name: str = MISSING
    steps: int = 10
    optim: OptimConfig = field(default_factory=OptimConfig)
    weights: dict[str, float] = field(default_factory=dict)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_loads_values_with_types_and_defaults(tmp_path: Path) -> None:
    cfg = load_config(
        ToyConfig, write(tmp_path, "name: a\noptim:\n  lr: 2e-4\nweights: {vision_text: 0.5}\n")
    )
    assert isinstance(cfg, ToyConfig) and isinstance(cfg.optim, OptimConfig)
    assert cfg.optim.lr == pytest.approx(2e-4)  # PyYAML reads 2e-4 as a string; the schema makes it a float
    assert cfg.steps == 10 and cfg.weights == {"vision_text": 0.5}


def test_overrides_are_typed(tmp_path: Path) -> None:
    cfg = load_config(
        ToyConfig, write(tmp_path, "name: a\n"), ["steps=42", "optim.betas=[0.5, 0.6]", "optim.lr=1e-2"]
    )
    assert cfg.steps == 42 and cfg.optim.betas == [0.5, 0.6] and cfg.optim.lr == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("name: a\noptim:\n  lrr: 1\n", [], "optim.lrr"),
        ("name: a\nsteps: many\n", [], "steps"),
        ("name: a\n", ["optim.lr=fast"], "optim.lr"),
        ("name: a\n", ["optim.nope=1"], "optim.nope"),
        ("name: a\n", ["steps"], "KEY=VALUE"),
        ("steps: 3\n", [], "name"),
        ("name: a\noptim:\n  schedule: step\n", [], "optim.schedule='step' is not one of"),
        ("name: [unclosed\n", [], "not valid YAML"),
    ],
)
def test_user_errors_are_one_line_naming_the_key(
    tmp_path: Path, text: str, overrides: list[str], expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(ToyConfig, path, overrides)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    if not overrides:
        assert str(path) in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(ToyConfig, tmp_path / "absent.yaml")


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(ToyConfig, write(tmp_path, "name: a\nsteps: 7\n"), ["optim.lr=0.5"])
    again = load_config(ToyConfig, write(tmp_path, to_yaml(cfg)))
    assert again == cfg


def test_nested_validation_gets_the_yaml_path(tmp_path: Path) -> None:
    """A component names its key relative to itself; the loader adds where it sits in the YAML."""
    with pytest.raises(ConfigError) as info:
        load_config(ToyConfig, write(tmp_path, "name: a\n"), ["optim.schedule=step"])
    assert str(info.value) == f"{tmp_path / 'exp.yaml'}: optim.schedule='step' is not one of cosine, linear"


def test_set_reaches_into_an_unset_decoder_variant(tmp_path: Path) -> None:
    """`model.decoder.type: trm` without a `trm:` section: --set fills that variant's defaults first; a key of
    another variant, or of no section at all, is still refused naming it."""
    import yaml
    from eg_decoders import TRMConfig

    from apps.qa.config import QAConfig

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo_qa_trm.yaml").read_text())
    raw["model"]["decoder"] = {"type": "trm"}
    path = tmp_path / "qa.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(QAConfig, path, ["model.decoder.trm.n_cycles=3"])
    assert cfg.model.decoder.trm.n_cycles == 3
    assert cfg.model.decoder.trm.hidden_size == TRMConfig().hidden_size  # the rest: the variant's defaults
    with pytest.raises(ConfigError, match="model.decoder.tiny"):
        load_config(QAConfig, path, ["model.decoder.tiny.hidden_size=8"])
    with pytest.raises(ConfigError, match=r"unknown key 'model.decodr.trm.n_cycles'"):
        load_config(QAConfig, path, ["model.decodr.trm.n_cycles=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'stage1.checkpoint.x'"):
        load_config(QAConfig, path, ["stage1.checkpoint.x=3"])
