"""The stage-2 config tree: every QA config in configs/ loads and prints; bad values are refused at load with
one line naming the key as the YAML writes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from apps.common.cli import train_main
from apps.common.config import ConfigError, load_config
from apps.qa.config import QAConfig

REPO = Path(__file__).resolve().parents[2]
QA_CONFIGS = sorted(
    p.name for p in (REPO / "configs").glob("*.yaml") if yaml.safe_load(p.read_text()).get("stage") == "qa"
)


def test_the_qa_configs_are_there() -> None:
    expected = {"demo_qa_trm.yaml", "demo_qa_baseline.yaml", "demo_qa_qwen.yaml"}
    expected |= {"trimodal_trm.yaml", "trimodal_qwen.yaml", "qa_qwen7b.yaml"}
    assert expected <= set(QA_CONFIGS)


@pytest.mark.parametrize("name", QA_CONFIGS)
def test_print_config_round_trips(name: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert train_main(["--config", str(REPO / "configs" / name), "--print-config"]) == 0
    printed = capsys.readouterr().out
    resolved = yaml.safe_load(printed)
    assert resolved["stage"] == "qa" and resolved["model"]["decoder"][resolved["model"]["decoder"]["type"]]
    again = tmp_path / "resolved.yaml"
    again.write_text(printed)
    assert train_main(["--config", str(again), "--print-config"]) == 0
    assert capsys.readouterr().out == printed


def write(tmp_path: Path, **changes: object) -> Path:
    """configs/demo_qa_trm.yaml with dotted keys changed (a None value deletes the key)."""
    cfg = yaml.safe_load((REPO / "configs" / "demo_qa_trm.yaml").read_text())
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    path = tmp_path / "qa.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model/decoder/tiny": {"hidden_size": 64}}, "model.decoder.tiny is set but type is 'trm'"),
        ({"model/decoder/type": "gpt"}, "model.decoder.type='gpt' is not one of trm, tiny, qwen"),
        ({"model/decoder/type": None}, "model.decoder.type"),
        ({"model/decoder/trm/prefix_dim": 64}, "model.decoder.trm.prefix_dim=64"),
        ({"model/decoder/trm/num_heads": 3}, "model.decoder.trm.hidden_size"),
        ({"model/modality_dropout/audio": 1.5}, "model.modality_dropout.audio=1.5"),
        ({"model/modalities": ["vision", "text"]}, "model.modalities"),
        ({"stage1/checkpoint": None}, "stage1.checkpoint"),
        ({"data/train/required": ["image"]}, "data.train.required"),
        ({"data/train/modalities": ["image", "qa"], "data/train/required": ["qa"]}, "data.train.modalities"),
        ({"eval/max_new_tokens": 0}, "eval.max_new_tokens=0"),
        ({"train/lr": -1.0}, "train.lr"),
        ({"demo_qwen": {"dir": "data/x"}}, "demo_qwen.dir"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else None,
)
def test_bad_values_are_refused_at_load(tmp_path: Path, changes: dict, message: str) -> None:
    path = write(tmp_path, **changes)
    with pytest.raises(ConfigError) as err:
        load_config(QAConfig, path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{path}: ") and message in line, line


def test_unset_variant_takes_its_defaults_and_outputs_follow_the_name(tmp_path: Path) -> None:
    cfg = load_config(QAConfig, write(tmp_path, **{"model/decoder": {"type": "tiny"}}))
    assert cfg.model.decoder.variant().hidden_size == 256 and cfg.model.decoder.trm is None
    assert (
        cfg.train.output_dir == "outputs/demo_qa_trm"
        and cfg.train.checkpoint_dir == "checkpoints/demo_qa_trm"
    )


def test_default_config_is_valid() -> None:
    QAConfig()
