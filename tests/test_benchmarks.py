"""The benchmarks in benchmarks/ run at tiny sizes (`--quick`) and their own arithmetic is right.

Benchmarks are not tests; these only check that each script runs through and writes what its table
reads, plus the model-FLOPs formulas of bench_gpu.py (benchmarks/flops.py) against hand counts and torch's FlopCounterMode.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: conftest's helpers
from conftest import copy_split, tiny_config, write_config

REPO = Path(__file__).resolve().parent.parent


def load_benchmark(name: str) -> ModuleType:
    """Import benchmarks/<name>.py as a module (benchmarks/ is a folder of scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def run_benchmark(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *args],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_bench_loss_quick(tmp_path: Path) -> None:
    out = tmp_path / "loss.json"
    result = run_benchmark("bench_loss", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {(r["setting"], r["mode"]): r for r in report["time"]}
    assert len(rows) == 10  # 2 settings x 5 modes, at B 16, D 256 (MRL dims 128, 256)
    for setting in ("loss", "head"):
        assert rows[(setting, "contrastive")]["ratio"] == 1.0
        assert rows[(setting, "contrastive")]["mean_mrl_dims"] == 0
        assert rows[(setting, "+ MRL all")]["mean_mrl_dims"] == 2
        assert rows[(setting, "+ MRL one")]["mean_mrl_dims"] == 1
        assert rows[(setting, "+ MRL k of n")]["mean_mrl_dims"] == 2  # k = 2 of the 2 dims
        assert rows[(setting, "pair all (fused)")]["mean_mrl_dims"] == 2  # every dim, one pass
    # 2 gloo ranks, global batch 64, width 32: both modes give the symmetric InfoNCE of the whole batch,
    # computed here in one process from the same seeded inputs
    memory = {r["mode"]: r for r in report["memory"]}
    generator = torch.Generator().manual_seed(1234)
    a = F.normalize(torch.randn(64, 32, generator=generator), dim=-1)
    b = F.normalize(torch.randn(64, 32, generator=generator), dim=-1)
    logits = a @ b.T / 0.07
    labels = torch.arange(64)
    expected = float((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2)
    for mode in ("full", "local_loss"):
        assert math.isclose(memory[mode]["global_loss"], expected, rel_tol=1e-5)
        assert memory[mode]["hwm_reset"]
    assert memory["local_loss"]["logits_mib"] == memory["full"]["logits_mib"] / 2
    assert "peak RSS rise" in result.stdout.splitlines()[-4]  # the table is printed last


@pytest.mark.slow
def test_bench_stage2_quick(tmp_path: Path) -> None:
    out = tmp_path / "stage2.json"
    result = run_benchmark("bench_stage2", "--quick", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    train = {r["model"]: r for r in report["train"]}
    # TRM and the baseline at the same parameter count (TRM adds only its 65-weight halting head)
    assert abs(train["trm"]["parameters"] - train["tiny"]["parameters"]) <= 100
    assert train["tiny"]["ratio_to_tiny"] == 1.0
    models = {r["model"] for r in report["generate"]}
    assert models == {"trm (cache)", "trm (no cache)", "tiny (cache)", "tiny (no cache)", "qwen (HF cache)"}
    for row in report["generate"]:
        assert row["new_tokens"] == row["max_new_tokens"]  # eos suppressed: every requested token generated
        if not row["model"].startswith("qwen"):
            assert row["cached_equals_uncached"] is True
    assert result.stdout.splitlines()[-1].startswith("8 ")  # the last table row: 8 new tokens


def test_bench_gpu_flops_by_hand() -> None:
    flops = load_benchmark("flops")  # the formulas bench_gpu.py reports
    assert flops.linear_flops(10, 3, 4, "none") == 240  # 2 x 10 x 3 x 4
    assert flops.linear_flops(10, 3, 4, "input") == 480
    assert flops.linear_flops(10, 3, 4, "weight") == 480
    assert flops.linear_flops(10, 3, 4, "both") == 720
    assert flops.attention_flops(2, 3, 5, 8, grad=False) == 960  # 2 products x 2 x 2 x 3 x 5 x 8
    assert flops.attention_flops(2, 3, 5, 8, grad=True) == 2880
    # one Qwen2 layer: width 8, MLP 16, 2 heads with 1 KV head (k/v width 4), vocab 10, 2 tokens, LoRA r=1
    shape = flops.QwenShape(hidden=8, intermediate=16, heads=2, kv_heads=1, layers=1, vocab=10)
    q = 2 * 2 * 8 * 8 + 2 * (2 * 2 * 8 * 1) + 3 * (2 * 2 * 1 * 8)  # base fwd; lora_A fwd+wgrad; lora_B all
    k = v = 2 * 2 * 8 * 4 + 2 * (2 * 2 * 8 * 1) + 3 * (2 * 2 * 1 * 4)
    o = 2 * (2 * 2 * 8 * 8) + 3 * (2 * 2 * 8 * 1) + 3 * (2 * 2 * 1 * 8)  # input grad from here on
    gate = up = 2 * (2 * 2 * 8 * 16) + 3 * (2 * 2 * 8 * 1) + 3 * (2 * 2 * 1 * 16)
    down = 2 * (2 * 2 * 16 * 8) + 3 * (2 * 2 * 16 * 1) + 3 * (2 * 2 * 1 * 8)
    attention = 3 * (4 * 1 * 2 * 2 * 8)
    lm_head = 2 * (2 * 2 * 8 * 10)
    expected = q + k + v + o + gate + up + down + attention + lm_head
    assert expected == 6560
    assert flops.qwen_lora_step_flops(shape, batch=1, seq=2, lora_r=1) == expected
    # with the embeddings needing a gradient (checkpointing), q/k/v and their lora_A pass input grads too
    extra = (2 * 2 * 8 * 8 + 2 * 2 * 8 * 4 * 2) + 3 * (2 * 2 * 8 * 1)
    assert flops.qwen_lora_step_flops(shape, 1, 2, 1, embeddings_need_grad=True) == expected + extra
    # a frozen 1-layer encoder, width 4, MLP 8, batch 2, 3 tokens: forward only
    encoder = flops.TransformerShape(layers=1, width=4, mlp=8)
    tokens = 6
    by_hand = 2 * tokens * (4 * 12 + 4 * 4 + 4 * 8 + 8 * 4) + 4 * 2 * 3 * 3 * 4
    assert flops.frozen_encoder_flops(encoder, batch=2, seq=3) == by_hand == 1824


@pytest.mark.slow
def test_bench_gpu_flops_match_torch_counter(tmp_path: Path) -> None:
    """The formulas against torch's FlopCounterMode on one real step of tiny versions of both workloads.

    FlopCounterMode counts attention's backward as 5 products (it recomputes Q K^T, as flash attention
    does); the model-FLOPs convention counts 4, so the counter is one Q K^T per attention call higher.
    """
    from eg_encoders import PoolingConfig, VisionEncoderConfig
    from eg_encoders.debug import write_open_clip_vit
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import MPNetConfig

    bench = load_benchmark("bench_gpu")
    cpu = torch.device("cpu")
    shape = bench.QwenShape(hidden=32, intermediate=64, heads=4, kv_heads=2, layers=2, vocab=100)
    workload = bench.qwen_workload(cpu, batch=2, seq=16, shape=shape, lora_r=4, checkpointing=False)
    with FlopCounterMode(display=False) as counter:
        workload.step()
    recompute = shape.layers * 2 * 2 * 16 * 16 * 32  # one Q K^T per layer
    assert counter.get_total_flops() == workload.flops_per_step + recompute

    fields = write_open_clip_vit(str(tmp_path))  # 32 px, patch 8, width 64, 2 layers
    vision = VisionEncoderConfig(
        **{**fields, "pretrained": ""},
        trainable_blocks=0,
        pooling=PoolingConfig(type="attention", num_queries=1, num_heads=2),
    )
    text = MPNetConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    workload = bench.pixmo_workload(cpu, 4, 8, vision, text, max_dim=64, mrl_dims=[64])
    with FlopCounterMode(display=False) as counter:
        workload.step()
    recompute = 2 * 4 * 1 * 17 * 64  # the pooling query against 17 tokens, the only attention with grad
    assert counter.get_total_flops() == workload.flops_per_step + recompute


@pytest.mark.slow
def test_bench_gpu_flow_with_cuda_stubbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """bench_gpu.main() end to end on the CPU: tiny towers, torch.cuda's timing and memory calls stubbed,
    torch.compile as identity. Checks the flow, the JSON and the table before a GPU run is spent on it."""
    from eg_encoders import PoolingConfig, VisionEncoderConfig
    from eg_encoders.debug import write_open_clip_vit
    from transformers import MPNetConfig

    bench = load_benchmark("bench_gpu")
    cpu = torch.device("cpu")
    fields = write_open_clip_vit(str(tmp_path))
    vision = VisionEncoderConfig(
        **{**fields, "pretrained": ""},
        trainable_blocks=0,
        pooling=PoolingConfig(type="attention", num_queries=1, num_heads=2),
    )
    text = MPNetConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    pixmo, qwen = bench.pixmo_workload, bench.qwen_workload
    small = bench.QwenShape(hidden=32, intermediate=64, heads=4, kv_heads=2, layers=1, vocab=100)
    monkeypatch.setattr(bench, "pixmo_workload", lambda _, b, n: pixmo(cpu, b, n, vision, text, 64, [16, 64]))
    monkeypatch.setattr(
        bench, "qwen_workload", lambda _, b, n, s, checkpointing: qwen(cpu, b, n, small, 4, checkpointing)
    )
    monkeypatch.setattr(bench, "matmul_peak_tflops", lambda size: 1e-3)
    checks = iter([True])  # main's own check sees a device; anything later (the optimizer's) sees none
    monkeypatch.setattr(torch.cuda, "is_available", lambda: next(checks, False))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stub")
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda *a: type("P", (), {"total_memory": 2**34})
    )
    monkeypatch.setattr(torch, "compile", lambda fn: fn)
    out = tmp_path / "gpu.json"
    argv = ["bench_gpu.py", "--pixmo-batch", "2", "--text-len", "8", "--qwen-batch", "2", "--seq-len", "16"]
    argv += ["--layers", "1", "--repeats", "2", "--region-s", "0", "--warmup", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    threads = torch.get_num_threads()
    try:
        bench.main()
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    rows = {(r["workload"], r["mode"]): r for r in report["rows"]}
    assert set(rows) == {("pixmo", "eager"), ("pixmo", "compile"), ("qwen", "eager"), ("qwen", "compile")}
    for row in rows.values():
        seconds = row["ms_per_step"] / 1000
        assert math.isclose(row["samples_per_s"], row["batch"] / seconds)
        assert math.isclose(row["mfu"], row["model_tflops"] / 1e-3)
        assert math.isclose(row["model_tflops"], row["model_tflop_per_step"] / seconds)
        assert row["peak_memory_gib"] == 3.0
    assert rows[("qwen", "eager")]["tokens_per_s"] == pytest.approx(
        2 * 16 / (rows[("qwen", "eager")]["ms_per_step"] / 1000)
    )
    assert capsys.readouterr().out.splitlines()[-1].startswith("  qwen: ")  # the table, then its notes


def test_bench_gpu_without_cuda_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    bench = load_benchmark("bench_gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py"])
    bench.main()  # returns (exit status 0) without touching a device
    assert capsys.readouterr().out.strip().splitlines() == [
        "bench_gpu: no CUDA device here (torch.cuda.is_available() is False); nothing measured"
    ]


@pytest.mark.slow
def test_bench_trainer_checkpoint_loader_quick(tmp_path: Path, demo_data: Path) -> None:
    """bench_trainer, bench_checkpoint and bench_loader run end to end in one process on a tiny stage-1
    config and a 64-sample split: the trainer's step losses equal the bare loop's, every contender is
    timed, and the bare loader's hand-written decoding gives the loader's tensors."""
    from eg_data import decode_sample, read_all

    small = tmp_path / "small"
    copy_split(demo_data / "train", small / "train", 64, 32)
    cfg = tiny_config(tmp_path, demo_data)
    cfg["data"]["train"]["shard_dir"] = str(small / "train")
    config = str(write_config(tmp_path, cfg))

    trainer = load_benchmark("bench_trainer").main(
        [
            "--config",
            config,
            "--quick",
            "--workdir",
            str(tmp_path / "runs"),
            "--out",
            str(tmp_path / "t.json"),
        ]
    )
    assert json.loads((tmp_path / "t.json").read_text())["median_ratio"] == trainer["median_ratio"]
    assert trainer["loss_check"]["steps"] == 4 and trainer["loss_check"]["worst_relative_difference"] <= 1e-5
    assert trainer["losses_first_pair"]["trainer"] == pytest.approx(
        trainer["losses_first_pair"]["bare"], rel=1e-5
    )
    assert all(len(v) == 1 and v[0] > 0 for v in trainer["regions_s"].values())

    ckpt = load_benchmark("bench_checkpoint").main(
        ["--config", config, "--quick", "--workdir", str(tmp_path / "ck"), "--out", str(tmp_path / "c.json")]
    )
    assert [(r["what"], r["contender"]) for r in ckpt["table"]] == [
        ("save (blocked)", "eg-train"),
        ("save (blocked)", "eg-train (sync)"),
        ("save (blocked)", "torch.save"),
        ("load", "eg-train"),
        ("load", "torch.load"),
    ]
    assert ckpt["checkpoint_mb"] > 0.1 and all(r["median_ms"] > 0 for r in ckpt["table"])
    assert all(region["saves"] >= 2 for regions in ckpt["saves"].values() for region in regions)

    bench_loader = load_benchmark("bench_loader")
    photos = tmp_path / "photos"
    loader = bench_loader.main(
        [
            "--quick",
            "--data",
            str(small),
            "--photos",
            str(photos),
            "--num-photos",
            "64",
            "--out",
            str(tmp_path / "l.json"),
        ]
    )
    demo, photo = loader["results"]
    assert demo["samples_in_split"] == 64 and photo["samples_in_split"] == 64
    assert demo["runs"]["loader"][0]["samples"] == 64 and demo["runs"]["bare"][0]["samples"] == 64
    assert demo["ratio_per_worker_with_startup"] > 0 and photo["ratio_per_worker_with_startup"] > 0
    # like for like: the hand-written decoding gives the loader's own tensors
    for shards, cfg_of in ((small / "train", bench_loader.demo_config), (photos, bench_loader.photo_config)):
        loader_cfg = cfg_of(str(shards), 0)
        raw = read_all(shards)[0]
        ours, reason = decode_sample(raw, loader_cfg, epoch=0)
        assert reason == "" and ours is not None
        bare = bench_loader.bare_sample(raw, loader_cfg)
        torch.testing.assert_close(bare["image"], ours["image"], rtol=1e-6, atol=1e-6)
        if "audio" in bare:
            torch.testing.assert_close(bare["audio"], ours["audio"])
            assert torch.equal(bare["audio_mask"], ours["audio_mask"])
