"""GPU throughput: samples/s, tokens/s, model FLOPs utilization (MFU) and peak memory, eager and torch.compile.

`uv run benchmarks/bench_gpu.py [--workloads pixmo qwen] [--layers 28] [--repeats 3] [--region-s 10]
[--quick] [--out FILE]`

Runs only where CUDA is present; elsewhere it prints one line and exits 0. Two workloads, random init,
built offline from the configs' shapes (nothing is downloaded):
- pixmo: configs/pixmo_alignment.yaml's stage-1 step. eg-encoders' VisionEncoder on open_clip's
  ViT-L-14-336 (`pretrained: ""`, random init), frozen (`trainable_blocks: 0`), attention pooling (1 query,
  16 heads); the text tower is all-mpnet-base-v2's shape (transformers' MPNetModel at MPNetConfig's
  defaults: 12 layers, width 768, vocab 30527) fed --text-len random token ids and mean-pooled as
  sentence-transformers does, frozen; a MatryoshkaProjection to 4096 per tower; the loss 0.25 x InfoNCE +
  MRL at one dim drawn per step of 128..4096 (eg-losses); AdamW on the trainable parts; bf16 autocast.
  Batch 64 (the config's per-GPU batch). Samples are image-text pairs; tokens are image tokens (577)
  plus text tokens.
- qwen: configs/qa_qwen7b.yaml's stage-2 step on a Qwen2.5-7B-shaped Qwen2ForCausalLM (width 3584, 28
  heads, 4 KV heads, MLP 18944, vocab 152064) with --layers decoder layers (default 28, the real depth;
  lower it on a smaller GPU: the table says which depth ran), weights in bf16 (not the config's 8-bit
  bitsandbytes: this measures the compute path, not the quantization kernels), LoRA r=16 / alpha 32 on
  every linear layer (peft), gradient checkpointing as in the config, AdamW on the LoRA weights; batch 8
  of --seq-len tokens (prefix and text as one token sequence), causal-LM loss over every position.
torch.compile: the pixmo towers (encoders, pooling, projections) are compiled and the loss runs eagerly
(its sampled dim changes shapes every step); the qwen model is compiled whole. A compile failure is
reported in the table, not hidden.

Timing: each contender (eager, compiled) repeats steps for at least --region-s seconds between two
torch.cuda.synchronize() calls, after warm-up steps (compilation included); the contenders alternate
region by region, --repeats times; medians. Model FLOPs per step come from the formulas below (matmuls
only: linear layers and attention scores, attention counted in full without causal halving, backward as
twice the forward for a layer whose weight trains, once for a frozen layer whose input needs a gradient,
zero under no_grad; recomputation by gradient checkpointing not counted: these are model FLOPs, not
hardware FLOPs). MFU = model FLOPs per second / the device's bf16 matmul peak, measured here with
--peak-size cubed bf16 matmuls (the best of 5 timed bursts). Peak memory is
torch.cuda.max_memory_allocated over each contender's timed regions. Writes JSON (default
outputs/benchmarks/bench_gpu.json) and prints a table last.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared machine_info
from flops import QwenShape, TransformerShape, alignment_step_flops, qwen_lora_step_flops
from machine import machine_info

# --- workloads ---


@dataclass
class Workload:
    """A training step to time: `step()` runs one (eager), `compiled_step()` the torch.compile'd one."""

    name: str
    batch: int
    tokens_per_step: int
    flops_per_step: int
    step: Callable[[], float]
    compiled_step: Callable[[], float]
    notes: str


def pixmo_workload(
    device: torch.device,
    batch: int,
    text_len: int,
    vision_config: Any = None,
    text_config: Any = None,
    max_dim: int = 4096,
    mrl_dims: list[int] | None = None,
) -> Workload:
    """configs/pixmo_alignment.yaml's step at random init (the defaults); smaller towers can be passed in."""
    from eg_encoders import MatryoshkaConfig, PoolingConfig, VisionEncoderConfig
    from eg_losses import ContrastiveLoss, ContrastiveLossConfig, MatryoshkaLossConfig
    from transformers import MPNetConfig, MPNetModel

    torch.manual_seed(0)
    if vision_config is None:
        vision_config = VisionEncoderConfig(
            backend="open_clip",
            model_name="ViT-L-14-336",
            pretrained="",
            trainable_blocks=0,
            pooling=PoolingConfig(type="attention", num_queries=1, num_heads=16),
        )
    mrl_dims = mrl_dims or [128, 256, 512, 1024, 2048, 4096]
    vision = vision_config.build().to(device)
    text = MPNetModel(text_config or MPNetConfig(), add_pooling_layer=False).to(device).eval()
    text.requires_grad_(False)
    proj_v = MatryoshkaConfig(max_dim=max_dim).build(vision.output_dim).to(device)
    proj_t = MatryoshkaConfig(max_dim=max_dim).build(text.config.hidden_size).to(device)
    contrastive = ContrastiveLoss(ContrastiveLossConfig()).to(device)
    mrl = MatryoshkaLossConfig(dims=mrl_dims, sample_single_mrl_dim=True).build(contrastive, max_dim)
    trainable = [p for m in (vision, proj_v, proj_t, contrastive) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4, weight_decay=0.01)
    size = vision.image_spec.size
    images = torch.randn(batch, 3, size, size, device=device)
    ids = torch.randint(0, text.config.vocab_size, (batch, text_len), device=device)
    mask = torch.ones(batch, text_len, dtype=torch.long, device=device)

    def embed(
        images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        a = proj_v(vision(images).pooled)  # (B, max_dim)
        with torch.no_grad():
            hidden = text(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, 768)
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1)  # sentence-transformers' mean pooling
        return a, proj_t(pooled)

    compiled_embed = torch.compile(embed)

    def make_step(embed_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> Callable[[], float]:
        def step() -> float:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                a, b = embed_fn(images, ids, mask)
                loss = 0.25 * contrastive(a.float(), b.float()) + mrl(a.float(), b.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        return step

    patch = vision.backbone.conv1.kernel_size[0]
    vit = vision.backbone
    vision_shape = TransformerShape(
        layers=len(vit.transformer.resblocks),
        width=vit.transformer.width,
        mlp=vit.transformer.resblocks[0].mlp.c_fc.out_features,
    )
    text_shape = TransformerShape(
        layers=text.config.num_hidden_layers, width=text.config.hidden_size, mlp=text.config.intermediate_size
    )
    flops = alignment_step_flops(batch, size, patch, vision_shape, text_shape, text_len, max_dim, mrl_dims)
    seq = (size // patch) ** 2 + 1
    return Workload(
        name="pixmo",
        batch=batch,
        tokens_per_step=batch * (seq + text_len),
        flops_per_step=flops,
        step=make_step(embed),
        compiled_step=make_step(compiled_embed),
        notes=f"{vision_config.model_name} {size}px + MPNet {text_shape.layers}x{text_shape.width}, "
        f"text {text_len} tokens, projection {max_dim}",
    )


def qwen_workload(
    device: torch.device, batch: int, seq: int, shape: QwenShape, lora_r: int = 16, checkpointing: bool = True
) -> Workload:
    """configs/qa_qwen7b.yaml's step on a random-init Qwen2 of `shape` in bf16 with LoRA on all linear layers."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=max(seq, 32768),
        tie_word_embeddings=False,
    )
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with device:  # initialize on the device: a 7B model's init on the CPU takes minutes
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.requires_grad_(False)
    if checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5's name
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.05, target_modules="all-linear")
    model = get_peft_model(model, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, shape.vocab, (batch, seq), device=device)
    compiled = torch.compile(model)

    def make_step(fn: Callable[..., Any]) -> Callable[[], float]:
        def step() -> float:
            loss = fn(input_ids=ids, labels=ids).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return float(loss.detach())

        return step

    return Workload(
        name="qwen",
        batch=batch,
        tokens_per_step=batch * seq,
        flops_per_step=qwen_lora_step_flops(shape, batch, seq, lora_r, embeddings_need_grad=checkpointing),
        step=make_step(model),
        compiled_step=make_step(compiled),
        notes=f"Qwen2 7B shape, {shape.layers} of 28 layers, bf16, LoRA r={lora_r}, "
        f"checkpointing {'on' if checkpointing else 'off'}, seq {seq}",
    )


# --- measurement ---


def matmul_peak_tflops(size: int, iterations: int = 50, bursts: int = 5) -> float:
    """The best bf16 matmul rate (TFLOP/s) of `bursts` timed bursts of (size x size) @ (size x size)."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(bursts):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iterations):
            a @ b
        torch.cuda.synchronize()
        best = max(best, 2 * size**3 * iterations / (time.perf_counter() - start) / 1e12)
    del a, b
    return best


def timed_region(step: Callable[[], float], seconds: float) -> tuple[float, int]:
    """Steps until `seconds` have passed (synchronized at both ends, checked every step); s/step, steps."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    steps = 0
    while True:
        step()  # float(loss) synchronizes every step
        steps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            torch.cuda.synchronize()
            return (time.perf_counter() - start) / steps, steps


def measure(workload: Workload, args: argparse.Namespace, peak: float) -> list[dict[str, Any]]:
    """Warm up both contenders, alternate their timed regions, and return one row per contender."""
    contenders: dict[str, Callable[[], float]] = {"eager": workload.step, "compile": workload.compiled_step}
    errors: dict[str, str] = {}
    for name, step in list(contenders.items()):
        try:
            start = time.perf_counter()
            for _ in range(args.warmup):
                step()
            print(f"{workload.name} {name}: warm-up {time.perf_counter() - start:.1f} s", flush=True)
        except Exception as err:
            if name == "eager":
                raise
            errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
            del contenders[name]
            print(f"{workload.name} {name}: FAILED {errors[name]}", flush=True)
    for step in contenders.values():  # one more step each, so no region is the first after another's warm-up
        step()
    times: dict[str, list[float]] = {n: [] for n in contenders}
    memory: dict[str, int] = dict.fromkeys(contenders, 0)
    names = list(contenders)
    for repeat in range(args.repeats):
        for name in names[repeat % max(1, len(names)) :] + names[: repeat % max(1, len(names))]:
            torch.cuda.reset_peak_memory_stats()
            seconds, _ = timed_region(contenders[name], args.region_s)
            memory[name] = max(memory[name], torch.cuda.max_memory_allocated())
            times[name].append(seconds)
    rows = []
    for name in ("eager", "compile"):
        row: dict[str, Any] = {
            "workload": workload.name,
            "mode": name,
            "batch": workload.batch,
            "notes": workload.notes,
        }
        if name in errors:
            rows.append({**row, "error": errors[name]})
            continue
        seconds = statistics.median(times[name])
        tflops = workload.flops_per_step / seconds / 1e12
        rows.append(
            {
                **row,
                "ms_per_step": 1000 * seconds,
                "ms_per_step_all": [1000 * t for t in times[name]],
                "samples_per_s": workload.batch / seconds,
                "tokens_per_s": workload.tokens_per_step / seconds,
                "model_tflop_per_step": workload.flops_per_step / 1e12,
                "model_tflops": tflops,
                "mfu": tflops / peak,
                "peak_memory_gib": memory[name] / 2**30,
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["pixmo", "qwen"], choices=["pixmo", "qwen"])
    parser.add_argument("--pixmo-batch", type=int, default=64)
    parser.add_argument("--text-len", type=int, default=256, help="pixmo caption tokens")
    parser.add_argument("--qwen-batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512, help="qwen tokens per sample")
    parser.add_argument("--layers", type=int, default=28, help="qwen decoder layers (28 = Qwen2.5-7B)")
    parser.add_argument("--no-checkpointing", action="store_true", help="qwen without gradient checkpointing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--region-s", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing (compilation included)")
    parser.add_argument("--peak-size", type=int, default=8192)
    parser.add_argument("--quick", action="store_true", help="small sizes and short regions: a first check")
    parser.add_argument("--out", default="outputs/benchmarks/bench_gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here (torch.cuda.is_available() is False); nothing measured")
        return
    if args.quick:
        args.pixmo_batch, args.text_len, args.qwen_batch, args.seq_len = 8, 64, 2, 128
        args.layers, args.repeats, args.region_s, args.warmup, args.peak_size = 2, 2, 1.0, 2, 4096
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    device = torch.device("cuda")
    peak = matmul_peak_tflops(args.peak_size)
    print(f"bf16 matmul peak ({args.peak_size}^3): {peak:.1f} TFLOP/s", flush=True)
    rows: list[dict[str, Any]] = []
    for name in args.workloads:
        if name == "pixmo":
            workload = pixmo_workload(device, args.pixmo_batch, args.text_len)
        else:
            shape = QwenShape(layers=args.layers)
            workload = qwen_workload(
                device, args.qwen_batch, args.seq_len, shape, checkpointing=not args.no_checkpointing
            )
        rows += measure(workload, args, peak)
        del workload
        gc.collect()
        torch.cuda.empty_cache()
        torch._dynamo.reset()
    report = {
        "machine": machine_info(gpu=True),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "bf16_matmul_peak_tflops": peak,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    print(
        f"\nGPU benchmark ({m['gpu']}, torch {m['torch']}, CUDA {m['cuda']}, commit {m['commit']}, {m['date']}); "
        f"bf16 matmul peak {peak:.1f} TFLOP/s; JSON: {out}"
    )
    print(f"median of {args.repeats} alternated regions of >= {args.region_s:g} s")
    print(
        f"{'workload':<9}{'mode':<9}{'batch':>6}{'ms/step':>10}{'samples/s':>11}{'tokens/s':>12}"
        f"{'TFLOP/s':>9}{'MFU':>7}{'peak GiB':>10}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['workload']:<9}{r['mode']:<9}{r['batch']:>6}  failed: {r['error']}")
            continue
        print(
            f"{r['workload']:<9}{r['mode']:<9}{r['batch']:>6}{r['ms_per_step']:>10.1f}{r['samples_per_s']:>11.1f}"
            f"{r['tokens_per_s']:>12.0f}{r['model_tflops']:>9.1f}{r['mfu']:>7.1%}{r['peak_memory_gib']:>10.1f}"
        )
    for r in rows:
        if r["mode"] == "eager":
            print(f"  {r['workload']}: {r['notes']}")


if __name__ == "__main__":
    main()
