"""The train app's command line: --help lists the configs, --print-config resolves overrides, bad input exits 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from apps.common.cli import CONFIGS_DIR, train_main


def test_help_lists_every_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        train_main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    names = sorted(p.name for p in CONFIGS_DIR.glob("*.yaml"))
    assert {"demo.yaml", "pixmo_alignment.yaml", "trimodal_alignment.yaml"} <= set(names)
    for name in names:
        assert f"configs/{name}" in out


def test_print_config_applies_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    code = train_main(
        [
            "--config",
            str(CONFIGS_DIR / "demo.yaml"),
            "--set",
            "train.max_steps=7",
            "--set",
            "losses.mrl=0.5",
            "--print-config",
        ]
    )
    assert code == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["train"]["max_steps"] == 7 and resolved["losses"]["mrl"] == 0.5
    assert resolved["experiment_name"] == "demo"


@pytest.mark.parametrize("config_name", ["pixmo_alignment.yaml", "trimodal_alignment.yaml"])
def test_real_configs_resolve(config_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--config", str(CONFIGS_DIR / config_name), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["experiment_name"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "train.max_stepz=3"], "train.max_stepz"),
        (["--set", "train.max_steps=many"], "train.max_steps"),
        (["--set", "losses.contrastive"], "KEY=VALUE"),
    ],
)
def test_bad_overrides_exit_2_with_one_line(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train_main(["--config", str(CONFIGS_DIR / "demo.yaml"), *args, "--print-config"])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and err.count("\n") == 1 and err.startswith("error: ")


def test_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train_main(["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err
