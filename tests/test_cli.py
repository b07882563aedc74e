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


# (override, the key as the YAML writes it): each refused by --print-config, before anything is built.
BAD_VALUES = [
    ("train.lr=-1", "train.lr"),
    ("data.train.batch_size=0", "data.train.batch_size"),
    ("train.precision=fp8", "train.precision"),
    ("losses.mrl_dims=[32,64,256]", "losses.mrl_dims"),
    ("losses.infonce.temperature=0", "losses.infonce.temperature"),
    ("model.audio.resampler.dim=-3", "model.audio.resampler.dim"),
    ("model.audio.resampler.num_latents=0", "model.audio.resampler.num_latents"),
    ("model.vision.encoder.trainable_blocks=-7", "model.vision.encoder.trainable_blocks"),
    ("model.vision.encoder.pooling.type=maximum", "model.vision.encoder.pooling.type"),
    ("model.projection.max_dim=0", "model.projection.max_dim"),
    ("data.train.text_dropout=1.5", "data.train.text_dropout"),
    ("data.train.num_workers=-1", "data.train.num_workers"),
    ("train.grad_accum_steps=0", "train.grad_accum_steps"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio"),
    ("losses.num_sampled_mrl_dims=5", "losses.num_sampled_mrl_dims"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("demo_models.image_size=0", "demo_models.image_size"),
]


@pytest.mark.parametrize(("override", "key"), BAD_VALUES, ids=[k for _, k in BAD_VALUES])
def test_bad_values_refused_at_load_naming_the_yaml_key(
    override: str, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = CONFIGS_DIR / "demo.yaml"
    code = train_main(["--config", str(config), "--set", override, "--print-config"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.startswith(f"error: {config}: {key}"), captured.err
    assert captured.err[len(f"error: {config}: {key}")] in " =:", captured.err  # the whole key, not a prefix
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_image_size_against_the_encoder_is_checked_at_load(capsys: pytest.CaptureFixture[str]) -> None:
    """A loader image size the vision encoder's own config contradicts (ViT-L-14-336 takes 336 px; 224, the
    default, means unset) is refused
    by --print-config, before any weights exist."""
    config = CONFIGS_DIR / "pixmo_alignment.yaml"
    code = train_main(["--config", str(config), "--set", "data.train.image.size=256", "--print-config"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {config}: data.train.image.size=256 differs"), err
    assert "336" in err
    assert train_main(["--config", str(config), "--set", "data.train.image.size=336", "--print-config"]) == 0
