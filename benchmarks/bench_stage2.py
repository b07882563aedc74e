"""Stage-2 decoders: TRM against the tiny baseline per training step, and generation tokens/s against length.

`uv run benchmarks/bench_stage2.py [--batch 64] [--prefix 24] [--gen-batch 8] [--lengths 8 16 32 64 128]
[--repeats 3] [--region-s 2] [--threads 1] [--quick] [--out FILE]`

Sizes from the demo configs: the decoder blocks of configs/demo_qa_trm.yaml (width 64, 1 layer, 4 heads,
n=2, T=2, 2 supervision steps, halting) and configs/demo_qa_baseline.yaml (width 64, 1 layer), an MLP
prefix projector from 64-wide encoder tokens, and the tiny Qwen2 of configs/demo_qa_qwen.yaml
(`demo_qwen:` sizes, written offline by apps/qa/demo_qwen.py into a temporary folder and loaded through
eg-decoders' QwenDecoder; here unquantized float32 with its LoRA r=16 on all linear layers, where the
demo loads it in 8-bit). max_seq_len is raised from the demo's 128 to 256 for TRM and the baseline so
the longest answers fit (it only adds position embeddings, the same to both). Every model is random-init.

Training step (TRM and the baseline only): one AdamW step (lr 2e-3, weight decay 0.1, grad clip 1.0, as
the demo configs) on one fixed batch of --batch demo questions and answers with a random (B, --prefix, 64)
prefix (the demo's 16 image tokens + 8 audio latents), forward + answer loss + backward + step. The two
are alternated region by region, each region repeating steps for at least --region-s seconds; medians.

Generation: greedy `generate` of exactly N new tokens for --gen-batch prompts (demo questions, same
prefix), for each N in --lengths: TRM and the baseline with their KV cache (the default) and without it
(full recompute per token), and the tiny Qwen (Hugging Face generate with its KV cache). A random model
may pick eos at any step; to measure N tokens every time, each model's output-head row of eos is zeroed
(its logit is 0, below the largest of the other random logits). TRM's halting head starts at bias -5
(never halting), so the random TRM runs all its supervision steps for every token, its worst case. The
contenders are alternated per N, --repeats times; tokens/s = batch x new tokens / median seconds.
Wall time and this process's CPU time (time.process_time, one thread) are both reported: on a shared
machine the CPU time is what the work itself cost, the wall time adds waiting for a core. Cached
and uncached tokens are checked identical.

Prints a table last and writes JSON (default outputs/benchmarks/bench_stage2.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from eg_decoders import Decoder, QwenDecoderConfig, TinyDecoderConfig, TRMConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the benchmarks' shared machine_info
from machine import machine_info

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = [  # the demo's six questions (eg_data.demo) and typical answers
    ("which digit is this?", "7"),
    ("is the digit odd or even?", "odd"),
    ("what is the digit plus one?", "8"),
    ("is the digit greater than five?", "yes"),
    ("are the strokes thin, medium or thick?", "medium"),
    ("does it lean left, right or stand upright?", "upright"),
]
PREFIX_DIM = 64  # the demo towers' token width


def decoder_section(config_file: str, kind: str) -> dict[str, Any]:
    """model.decoder.<kind> of a demo config."""
    return yaml.safe_load((REPO / "configs" / config_file).read_text())["model"]["decoder"][kind]


def build_small(kind: str, max_seq_len: int) -> Decoder:
    """TRM or the tiny baseline at the demo config's sizes, with an MLP projector from PREFIX_DIM."""
    torch.manual_seed(0)
    if kind == "trm":
        values = decoder_section("demo_qa_trm.yaml", "trm")
        return TRMConfig(**{**values, "max_seq_len": max_seq_len, "prefix_dim": PREFIX_DIM}).build()
    values = decoder_section("demo_qa_baseline.yaml", "tiny")
    return TinyDecoderConfig(**{**values, "max_seq_len": max_seq_len, "prefix_dim": PREFIX_DIM}).build()


def build_qwen(folder: str) -> Decoder:
    """The demo's tiny Qwen2 (configs/demo_qa_qwen.yaml `demo_qwen:`), written into `folder`, then loaded."""
    from apps.qa.demo_qwen import DemoQwenConfig, write_demo_qwen

    sizes = yaml.safe_load((REPO / "configs" / "demo_qa_qwen.yaml").read_text())["demo_qwen"]
    texts = [text for pair in QUESTIONS for text in pair] + [str(d) for d in range(11)]
    write_demo_qwen(DemoQwenConfig(**{**sizes, "dir": folder}), texts)
    qwen = decoder_section("demo_qa_qwen.yaml", "qwen")
    config = QwenDecoderConfig(
        **{**qwen, "model_name": folder, "quantization": "none", "dtype": "float32", "prefix_dim": PREFIX_DIM}
    )
    return config.build()


def never_eos(decoder: Decoder) -> None:
    """Zero the output head's eos row, so a random model generates every requested token."""
    head = decoder.lm_head if hasattr(decoder, "lm_head") else decoder.model.get_output_embeddings()
    with torch.no_grad():
        head.weight[decoder.eos_id] = 0.0


def timed_region(fn: Callable[[], Any], seconds: float) -> tuple[float, float]:
    """Call fn until `seconds` have passed (at least once); return (wall s, CPU s) per call.

    CPU time is this process's (one thread): what the work itself cost, whatever else the machine ran.
    """
    calls = 0
    start, start_cpu = time.perf_counter(), time.process_time()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls, (time.process_time() - start_cpu) / calls


def alternate(
    contenders: dict[str, Callable[[], Any]], repeats: int, seconds: float
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Time each contender region by region, rotating the order every repeat; wall and CPU s per call."""
    names = list(contenders)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            wall, used = timed_region(contenders[name], seconds)
            times[name].append(wall)
            cpu[name].append(used)
    return times, cpu


def bench_train(args: argparse.Namespace, models: dict[str, Decoder]) -> list[dict[str, Any]]:
    """Training step time of TRM and the baseline on one fixed batch, alternated."""
    generator = torch.Generator().manual_seed(0)
    pairs = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.batch)]
    prefix = torch.randn(args.batch, args.prefix, PREFIX_DIM, generator=generator)  # (B, P, 64)
    steps = {}
    for name, model in models.items():
        batch = model.encode_qa([q for q, _ in pairs], [a for _, a in pairs])
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)

        def step(
            model: Decoder = model, batch: dict = batch, optimizer: torch.optim.Optimizer = optimizer
        ) -> float:
            model.train()
            out = model(prefix, batch["input_ids"], batch["attention_mask"], batch["labels"])
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            return float(out.loss.detach())

        step()  # warm-up (and the optimizer's state)
        steps[name] = step
    times, cpu = alternate(steps, args.repeats, args.region_s)
    text_len = models["trm"].encode_qa([q for q, _ in pairs], [a for _, a in pairs])["input_ids"].shape[1]
    base = times["tiny"]
    return [
        {
            "model": name,
            "parameters": sum(p.numel() for p in models[name].parameters()),
            "batch": args.batch,
            "prefix": args.prefix,
            "text_len": text_len,
            "ms_per_step": 1000 * statistics.median(times[name]),
            "ms_per_step_all": [1000 * t for t in times[name]],
            "ratio_to_tiny": statistics.median(t / b for t, b in zip(times[name], base)),
            "cpu_ms_per_step": 1000 * statistics.median(cpu[name]),
            "cpu_ratio_to_tiny": statistics.median(t / b for t, b in zip(cpu[name], cpu["tiny"])),
        }
        for name in steps
    ]


def bench_generate(args: argparse.Namespace, models: dict[str, Decoder]) -> list[dict[str, Any]]:
    """Tokens/s of greedy generation against the number of new tokens, cached and uncached, alternated."""
    generator = torch.Generator().manual_seed(1)
    questions = [QUESTIONS[i % len(QUESTIONS)][0] for i in range(args.gen_batch)]
    prefix = torch.randn(args.gen_batch, args.prefix, PREFIX_DIM, generator=generator)  # (B, P, 64)
    rows = []
    for length in args.lengths:
        contenders: dict[str, Callable[[], torch.Tensor]] = {}
        for name, model in models.items():
            prompts = model.encode_prompts(questions)
            ids, mask = prompts["input_ids"], prompts["attention_mask"]
            if name == "qwen":
                contenders["qwen (HF cache)"] = lambda m=model, i=ids, k=mask, n=length: m.generate(
                    prefix, i, k, max_new_tokens=n
                )
                continue
            for cached in (True, False):
                label = f"{name} ({'cache' if cached else 'no cache'})"
                contenders[label] = lambda m=model, i=ids, k=mask, c=cached, n=length: m.generate(
                    prefix, i, k, max_new_tokens=n, use_cache=c
                )
        outputs = {name: fn() for name, fn in contenders.items()}  # warm-up, and the tokens to compare
        times, cpu = alternate(contenders, args.repeats, args.gen_region_s)
        for name, seconds in times.items():
            new = outputs[name].shape[1]
            if new != length:  # every row emitted eos early: tokens/s would be of a shorter answer
                raise RuntimeError(
                    f"{name} generated {new} of {length} tokens (eos despite its zeroed head row)"
                )
            family = name.split(" ")[0]
            same = None
            if family in ("trm", "tiny"):
                same = bool(torch.equal(outputs[f"{family} (cache)"], outputs[f"{family} (no cache)"]))
            rows.append(
                {
                    "model": name,
                    "max_new_tokens": length,
                    "new_tokens": new,
                    "batch": args.gen_batch,
                    "ms_per_call": 1000 * statistics.median(seconds),
                    "ms_per_call_all": [1000 * t for t in seconds],
                    "tokens_per_s": args.gen_batch * new / statistics.median(seconds),
                    "tokens_per_cpu_s": args.gen_batch * new / statistics.median(cpu[name]),
                    "cached_equals_uncached": same,
                }
            )
            print({k: v for k, v in rows[-1].items() if not k.endswith("_all")}, flush=True)
            if same is False:
                raise RuntimeError(
                    f"{family}: cached and uncached generation gave different tokens at N={length}"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="training batch (the demo's)")
    parser.add_argument(
        "--prefix", type=int, default=24, help="prefix tokens (16 image + 8 audio in the demo)"
    )
    parser.add_argument("--gen-batch", type=int, default=8)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--max-seq-len", type=int, default=256, help="TRM/baseline max_seq_len")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--region-s", type=float, default=2.0, help="least seconds of a training region")
    parser.add_argument(
        "--gen-region-s", type=float, default=1.0, help="least seconds of a generation region"
    )
    parser.add_argument("--no-qwen", action="store_true", help="skip the tiny Qwen (needs the qwen extra)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--out", default="outputs/benchmarks/bench_stage2.json")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.gen_batch, args.lengths, args.repeats = 4, 2, [4, 8], 1
        args.region_s = args.gen_region_s = 0.0
    torch.set_num_threads(args.threads)
    # training changes the weights (and teaches eos): generation gets fresh random-init twins
    small = {"trm": build_small("trm", args.max_seq_len), "tiny": build_small("tiny", args.max_seq_len)}
    with tempfile.TemporaryDirectory() as folder:
        generating = {name: build_small(name, args.max_seq_len) for name in small}
        if not args.no_qwen:
            generating["qwen"] = build_qwen(folder)
        for model in generating.values():
            never_eos(model)
        report: dict[str, Any] = {
            "machine": machine_info(args.threads),
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "train": bench_train(args, small),
            "generate": bench_generate(args, generating),
        }
    report["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    m = report["machine"]
    print(
        f"\nstage-2 benchmark ({m['cpu']}, nproc {m['nproc']}, {args.threads} thread(s), torch {m['torch']}, "
        f"commit {m['commit']}, {m['date']}, load average {m['load_average_1min_at_start']:.1f} -> "
        f"{m['load_average_1min_at_end']:.1f}); JSON: {out}"
    )
    print(f"training step, median of {args.repeats} alternated regions of >= {args.region_s:g} s")
    print(
        f"{'model':<8}{'params':>10}{'batch':>7}{'prefix':>8}{'text':>6}{'ms/step':>10}{'vs tiny':>9}"
        f"{'CPU ms/step':>13}{'CPU vs tiny':>13}"
    )
    for r in report["train"]:
        print(
            f"{r['model']:<8}{r['parameters']:>10,}{r['batch']:>7}{r['prefix']:>8}{r['text_len']:>6}"
            f"{r['ms_per_step']:>10.1f}{r['ratio_to_tiny']:>8.2f}x{r['cpu_ms_per_step']:>13.1f}"
            f"{r['cpu_ratio_to_tiny']:>12.2f}x"
        )
    names = list(dict.fromkeys(r["model"] for r in report["generate"]))
    for key, what in (("tokens_per_s", "tokens/s (wall)"), ("tokens_per_cpu_s", "tokens per CPU second")):
        print(f"\ngeneration, batch {args.gen_batch}, {what}, median of {args.repeats} alternated regions")
        print(f"{'new tokens':<12}" + "".join(f"{n:>18}" for n in names))
        for length in args.lengths:
            cells = {r["model"]: r[key] for r in report["generate"] if r["max_new_tokens"] == length}
            print(f"{length:<12}" + "".join(f"{cells[n]:>18.0f}" for n in names))


if __name__ == "__main__":
    main()
