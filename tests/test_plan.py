"""apps/plan on every real config in configs/: each builds at its real size on fake tensors, offline, and its
plan holds what a hand count says (parameters of ViT-L/14-336 and Qwen2.5-7B/14B, 8-bit bytes, LoRA,
AdamW state) and model FLOPs within 5% of benchmarks/flops.py's analytic count.

Stage-2 configs whose stage-1 checkpoint does not exist are planned from the stage-1 config their
checkpoint path names (checkpoints/<name>/... -> configs/<name>.yaml), as `--stage1-config` does.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
REAL_CONFIGS = sorted(p.stem for p in (REPO / "configs").glob("*.yaml") if not p.stem.startswith("demo"))


def _flops_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flops", REPO / "benchmarks" / "flops.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("flops", module)
    spec.loader.exec_module(module)
    return module


def stage1_config_of(name: str) -> str | None:
    """configs/<stage-1>.yaml for a stage-2 config (from its checkpoint path), None for a stage-1 config."""
    raw = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    if raw.get("stage", "alignment") != "qa":
        return None
    return str(REPO / "configs" / f"{Path(raw['stage1']['checkpoint']).parent.name}.yaml")


@functools.cache
def planned(name: str):
    """The plan of configs/<name>.yaml on 1 H100, the fit alone (no verifying steps) except where a test
    checks the verified largest batch (pixmo_alignment)."""
    from apps.planning import make_plan

    verify = 3 if name == "pixmo_alignment" else 0
    return make_plan(
        str(REPO / "configs" / f"{name}.yaml"), stage1_config=stage1_config_of(name), max_verify=verify
    )


def _component(plan, name: str):
    return next(c for c in plan.components if c.name == name)


def vit_params(width: int, layers: int, patch: int, image: int, mlp: int) -> int:
    """open_clip VisionTransformer parameters without the output projection, counted by hand."""
    tokens = (image // patch) ** 2 + 1
    conv = 3 * patch * patch * width  # patch embedding, no bias
    embeddings = width + tokens * width  # class token + positions
    block = 2 * width + (width * 3 * width + 3 * width) + (width * width + width)  # ln_1, attention
    block += 2 * width + (width * mlp + mlp) + (mlp * width + width)  # ln_2, MLP
    return conv + embeddings + 2 * width + layers * block + 2 * width  # ln_pre, blocks, ln_post


def qwen2_params(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int) -> int:
    """Qwen2ForCausalLM parameters (untied embeddings and head, q/k/v biases), counted by hand."""
    kv = kv_heads * hidden // heads
    layer = (hidden * hidden + hidden) + 2 * (hidden * kv + kv) + hidden * hidden  # q, k, v, o
    layer += 3 * hidden * intermediate + 2 * hidden  # gate, up, down; two RMSNorms
    return 2 * vocab * hidden + layers * layer + hidden


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_CONFIGS)
def test_every_real_config_plans_at_real_size(name: str) -> None:
    plan = planned(name)
    params = sum(c.params for c in plan.components)
    trainable = sum(c.trainable for c in plan.components)
    weights = sum(v for c in plan.components for k, v in c.bytes_by_dtype.items() if "buffers" not in k)
    assert params > 50e6  # a real-size model, not a debug one
    assert 0 < trainable <= params
    # every weight is held once; AdamW keeps two fp32 moments per trainable (fp32) parameter and a step
    # count (one fp32 scalar) per trainable tensor
    assert plan.peak_by_kind["Parameter"] == weights
    assert plan.peak_by_kind["Optstate"] == sum(c.optimizer_bytes for c in plan.components)
    assert 0 < plan.peak_by_kind["Optstate"] - 8 * trainable < 4 * 2000
    assert plan.peak_by_kind.get("Activation", 0) > 0
    fixed = weights + plan.peak_by_kind["Optstate"]
    assert plan.gpu_plans[0].peak_bytes > fixed
    assert 0 < plan.model_flops_per_sample <= plan.step_flops_per_sample
    for gpu in plan.gpu_plans:  # largest batch from the fit: the peak it predicts stays in the budget
        assert gpu.max_batch >= 1, gpu
        assert plan.fit_fixed_bytes + plan.fit_bytes_per_sample * gpu.max_batch <= gpu.budget_bytes
        assert plan.fit_fixed_bytes + plan.fit_bytes_per_sample * (gpu.max_batch + 1) > gpu.budget_bytes


@pytest.mark.slow
def test_pixmo_alignment_plan_by_hand() -> None:
    from apps.planning.report import format_plan

    plan = planned("pixmo_alignment")
    flops = _flops_module()
    assert plan.inputs == {"image_size": 336, "text_tokens": 384}
    vit_l = vit_params(width=1024, layers=24, patch=14, image=336, mlp=4096)
    assert vit_l == 303_507_456
    assert _component(plan, "vision.encoder.backbone").params == vit_l
    assert _component(plan, "vision.encoder.backbone").trainable == 0  # trainable_blocks: 0
    assert _component(plan, "vision.projection").trainable == 1024 * 4096 + 4096  # Matryoshka to 4096
    analytic = flops.alignment_step_flops(
        plan.batch_size,
        336,
        14,
        flops.VIT_L_14_336,
        flops.MPNET_BASE,
        384,
        4096,
        [128, 256, 512, 1024, 2048, 4096],
    )
    assert plan.model_flops_per_sample == pytest.approx(analytic / plan.batch_size, rel=0.05)
    h100 = plan.gpu_plans[0]
    assert h100.max_batch_verified and h100.max_batch_peak_bytes <= h100.budget_bytes
    text = format_plan(plan)
    for gpu in ("NVIDIA H100 SXM 80GB", "NVIDIA H200 SXM 141GB"):
        row = next(line for line in text.splitlines() if line.startswith(gpu))
        assert " yes " in row and "GiB" in row


@pytest.mark.slow
def test_qa_qwen7b_plan_by_hand() -> None:
    plan = planned("qa_qwen7b")
    flops = _flops_module()
    decoder = _component(plan, "decoder")
    qwen7b = qwen2_params(3584, 18944, 28, 28, 4, 152064)
    assert qwen7b == 7_615_616_512  # the model card's 7.61B (safetensors index: 15,231,233,024 bf16 bytes)
    lora = 28 * 16 * ((3584 + 3584) * 2 + (3584 + 512) * 2 + (3584 + 18944) * 3)  # r=16, all-linear
    assert decoder.trainable == lora
    assert decoder.params == qwen7b + lora
    quantized = 28 * (2 * 3584 * 3584 + 2 * 3584 * 512 + 3 * 3584 * 18944)  # every layer's linear weight
    assert decoder.bytes_by_dtype["int8"] == quantized  # one byte each, as bitsandbytes stores them
    row_scales = 28 * (3584 + 512 + 512 + 3584 + 18944 + 18944 + 3584)  # SCB: one fp32 per output row
    rotary = 2 * 128 // 2  # inv_freq and original_inv_freq, head dim 128
    assert decoder.bytes_by_dtype["float32 (buffers)"] == 4 * (row_scales + rotary)
    rest = decoder.params - quantized  # embeddings, head, norms, biases, LoRA: fp32 after kbit preparation
    assert decoder.bytes_by_dtype["float32"] == 4 * rest
    # the decoder's sequence: 197 ViT-B/16 tokens + 64 audio latents + 512 question/answer tokens
    seq = 197 + 64 + plan.inputs["text_tokens"]
    shape = flops.QwenShape()
    analytic = flops.qwen_lora_step_flops(shape, 1, seq, 16, embeddings_need_grad=True)
    # the component FLOPs include checkpointing's recompute, which only the decoder does
    others = sum(c.flops_per_sample for c in plan.components if c.name != "decoder")
    assert plan.model_flops_per_sample - others == pytest.approx(analytic, rel=0.05)


@pytest.mark.slow
def test_trimodal_qwen_plans_qwen14b() -> None:
    if "trimodal_qwen" not in REAL_CONFIGS:
        pytest.skip("configs/trimodal_qwen.yaml is gone")
    decoder = _component(planned("trimodal_qwen"), "decoder")
    qwen14b = qwen2_params(5120, 13824, 48, 40, 8, 152064)
    assert qwen14b == 14_770_033_664  # the model card's 14.7B
    assert decoder.params - decoder.trainable == qwen14b


def test_stage2_without_checkpoint_or_stage1_config_is_refused(tmp_path: Path) -> None:
    """One line naming stage1.checkpoint and the flag, exit 2, nothing built."""
    result = subprocess.run(
        [sys.executable, str(REPO / "apps" / "plan" / "__main__.py"), "--config", "configs/qa_qwen7b.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "stage1.checkpoint=" in lines[0] and "--stage1-config" in lines[0], lines
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_plan_json_is_the_plan(tmp_path: Path) -> None:
    """--json prints Plan.to_dict() (pixmo_alignment with ViT-B/32 at batch 4: the CLI path, --set included)."""
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "apps" / "plan" / "__main__.py"),
            "--config",
            "configs/pixmo_alignment.yaml",
        ]
        + ["--json", "--set", "model.vision.encoder.model_name=ViT-B-32", "--set", "data.train.batch_size=4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads(result.stdout)
    assert plan["batch_size"] == 4 and plan["inputs"]["image_size"] == 224
    backbone = next(c for c in plan["components"] if c["name"] == "vision.encoder.backbone")
    assert backbone["params"] == vit_params(width=768, layers=12, patch=32, image=224, mlp=3072)
    assert [g["gpu"] for g in plan["gpu_plans"]] == [
        "NVIDIA H100 SXM 80GB",
        "NVIDIA H200 SXM 141GB",
        "NVIDIA A100 SXM 80GB",
    ]
