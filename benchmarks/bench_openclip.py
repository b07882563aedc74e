"""Stage-1 training throughput against OpenCLIP's own trainer (`open_clip_train`), like for like.

`uv run --group bench benchmarks/bench_openclip.py [--data data/demo/train] [--pairs 5] [--steps 92]`

One open_clip CLIP (the demo's ViT size: 32 px, patch 8, width 64, 2 layers; a 2-layer width-64 text tower
on open_clip's own tokenizer; embed_dim 64), random init, written once as a `local-dir:` model folder, so
both trainers start from the same weights. The same demo shards, batch 64, one data worker, one torch
thread each (OMP_NUM_THREADS=1), fp32, AdamW (lr 1e-3 constant, wd 0.1, betas 0.9/0.98, eps 1e-6, no
clipping), contrastive loss only with CLIP's learnable logit scale, OpenCLIP's default augmentation (random
resized crop of 0.9..1 of the area) on both, a checkpoint at every epoch end (both trainers' defaults), no
validation during training (our app evaluates the test split once at the end, after the timed region).
Each contender runs as a subprocess through its CLI:
`python -m open_clip_train.main ...` (through a 3-line launcher, see LAUNCHER) and `apps/train --config`
(the CLIP-as-CLIP setup of configs/clip_finetune.yaml). They alternate, `--pairs` times.

Throughput is timed from outside, the same way for both: the parent timestamps every progress report as it
arrives (OpenCLIP's log lines, our progress bar), and samples/s = batch * (steps between the first report
at or after step `--skip` and the last report) / the seconds between them (>= 10 s); start-up (launch to
the first report) is reported separately. Medians over the pairs; the ratio is the median of the per-pair
ratios (each pair runs back to back, under about the same load of the shared machine). Then one run of each with a loss at
every step on one fixed batch of 64 without augmentation (so both see the same batch at every step: the
first losses side by side should agree to rounding), and one run of each under cProfile (where each spends
a step's time).
Prints a table last and writes outputs/bench_openclip.json.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import platform
import pstats
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 64

MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

# webdataset 1.0.2's tar expander ends each shard with a marker dict without "fname", which
# open_clip_train 3.3's own group_by_keys_nothrow indexes unguarded (KeyError: 'fname'); the launcher drops
# such markers, then runs open_clip_train's CLI entry point with the command-line arguments unchanged.
LAUNCHER = """import sys
from open_clip_train import data, main
_group = data.group_by_keys_nothrow
data.group_by_keys_nothrow = lambda src, *a, **k: _group((s for s in src if "fname" in s), *a, **k)
main.main(sys.argv[1:])
"""

OPENCLIP_PROGRESS = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+)")
OPENCLIP_LOSS = re.compile(r"Contrastive_loss: ([0-9.]+)")
OURS_PROGRESS = re.compile(r"(\d+)/(\d+) \[")


def write_model(folder: Path) -> None:
    """The shared random-init CLIP as an open_clip `local-dir:` folder (config + weights)."""
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": MODEL_CFG, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    torch.save(open_clip.CLIP(**MODEL_CFG).state_dict(), folder / "open_clip_pytorch_model.bin")


def write_one_batch_split(src: Path, dst: Path) -> Path:
    """The first BATCH samples of `src` as one shard: every step of either trainer sees exactly this batch
    (in its own order, which the contrastive loss does not depend on)."""
    import webdataset as wds
    from eg_data import ShardInfo, read_all
    from eg_data.shards import write_index

    dst.mkdir(parents=True, exist_ok=True)
    samples = read_all(src)[:BATCH]
    with wds.TarWriter(str(dst / "shard-00000.tar"), encoder=False, mtime=0) as writer:
        for sample in samples:
            writer.write({k: v for k, v in sample.items() if k != "__url__"})
    write_index(dst, [ShardInfo(path="shard-00000.tar", num_samples=len(samples))])
    return dst


def num_samples(data: Path) -> int:
    return int(json.loads((data / "shards.json").read_text())["num_samples"])


def openclip_command(
    work: Path, data: Path, epochs: int, log_every: int, name: str, extra: tuple[str, ...] = ()
) -> list[str]:
    shards = sorted(p.name for p in data.glob("*.tar"))
    first, last = shards[0].split("-")[1].split(".")[0], shards[-1].split("-")[1].split(".")[0]
    prefix = shards[0].split("-")[0]
    return [
        *[str(work / "launch_open_clip_train.py")],
        "--model", f"local-dir:{work / 'model'}",
        "--train-data", f"{data}/{prefix}-{{{first}..{last}}}.tar",
        "--train-num-samples", str(num_samples(data)),
        "--dataset-type", "webdataset",
        "--batch-size", str(BATCH),
        "--workers", "1",
        "--epochs", str(epochs),
        "--lr", "1e-3", "--wd", "0.1", "--beta1", "0.9", "--beta2", "0.98", "--eps", "1e-6",
        "--warmup", "0", "--lr-scheduler", "const",
        "--precision", "fp32",
        "--log-every-n-steps", str(log_every),
        "--logs", str(work / "openclip_logs"), "--name", name, "--report-to", "",
        "--seed", "0",
        *extra,
    ]  # fmt: skip


def ours_config(
    work: Path, data: Path, held_out: Path, steps: int, log_every: int, name: str, augment: bool
) -> Path:
    """Our stage-1 config for the same model and setup (configs/clip_finetune.yaml's CLIP-as-CLIP form).

    augment: OpenCLIP's default train transform, a random resized crop of 0.9..1 of the area (aspect
    3/4..4/3, no flip); else resize and center crop (on the 32 px demo images: the image as it is).
    """
    import yaml

    model = f"local-dir:{work / 'model'}"
    cfg = {
        "experiment_name": name,
        "seed": 0,
        "num_threads": 1,
        "data": {
            "val_dir": str(held_out / "val"),
            "test_dir": str(held_out / "test"),
            "train": {
                "shard_dir": str(data),
                "batch_size": BATCH,
                "num_workers": 1,
                "shuffle_buffer": 2000,
                "modalities": ["image", "text"],
                "required": ["image", "text"],
                "text_dropout": 0.0,
                "image": {"augment": augment, "crop_scale_min": 0.9, "hflip": False},
            },
        },
        "model": {
            "pairs": ["vision_text"],
            "projection": {"max_dim": MODEL_CFG["embed_dim"], "identity": True},
            "vision": {
                "encoder": {
                    "backend": "open_clip",
                    "model_name": model,
                    "pretrained": "",
                    "trainable_blocks": -1,
                    "clip_projection": True,
                    "pooling": {"type": "cls"},
                }
            },
            "text": {"encoder": {"backend": "open_clip", "model_name": model, "trainable": True}},
        },
        "losses": {
            "contrastive": 1.0,
            "mrl": 0.0,
            "infonce": {"temperature": 0.07, "learnable_temperature": True},
        },
        "train": {
            "max_steps": steps,
            "lr": 1.0e-3,
            "weight_decay": 0.1,
            "betas": [0.9, 0.98],
            "eps": 1.0e-6,
            "schedule": "constant",
            "warmup_ratio": 0.0,
            "grad_clip": 0.0,
            "precision": "fp32",
            "device": "cpu",
            "log_every": log_every,
            "val_every": 0,
            "val_at_epoch_end": False,
            "resume": "never",
            "output_dir": str(work / "ours_out" / name),
            "checkpoint_dir": str(work / "ours_ckpt" / name),
        },
        "eval": {"dims": [MODEL_CFG["embed_dim"]], "plot_max_points": 0},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out["PYTHONUNBUFFERED"] = "1"
    return out


def run_timed(cmd: list[str], cwd: Path, step_of: callable, log: Path) -> list[tuple[float, int]]:
    """Run `cmd`; return (seconds since launch, step) for every progress report, read as it arrives."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    events: list[tuple[float, int]] = []
    chunks: list[bytes] = []

    def read() -> None:
        buf = b""
        while True:
            data = proc.stdout.read1(65536)
            if not data:
                break
            chunks.append(data)
            buf += data
            *parts, buf = re.split(rb"[\r\n]", buf)
            now = time.perf_counter() - t0
            for part in parts:
                step = step_of(part.decode(errors="replace"))
                if step is not None:
                    events.append((now, step))

    reader = threading.Thread(target=read)
    reader.start()
    proc.wait()
    reader.join()
    log.write_bytes(b"".join(chunks))
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} ... failed (exit {proc.returncode}); see {log}")
    return events


def region(events: list[tuple[float, int]], skip: int) -> dict[str, float]:
    """samples/s between the first report at or after step `skip` and the last report; start-up seconds."""
    inside = [(t, s) for t, s in events if s >= skip]
    (t_a, s_a), (t_b, s_b) = inside[0], inside[-1]
    return {
        "startup_s": events[0][0],
        "region_s": t_b - t_a,
        "region_steps": s_b - s_a,
        "samples_per_s": BATCH * (s_b - s_a) / (t_b - t_a),
    }


def openclip_step(num_batches: int):
    def step_of(line: str) -> int | None:
        m = OPENCLIP_PROGRESS.search(line)
        return None if m is None else int(m.group(1)) * num_batches + int(m.group(2)) // BATCH

    return step_of


def ours_step(line: str) -> int | None:
    m = OURS_PROGRESS.search(line)
    return None if m is None else int(m.group(1))


# Where the time goes, per training step, from each trainer's cProfile'd main process. Each part is the
# outermost call of that name (its cumulative seconds, so callees are inside), divided by the steps.
PROFILE_PARTS = {
    "openclip": {
        "loop": [("open_clip_train/train.py", "train_one_epoch")],
        "data_wait": [("torch/utils/data/dataloader.py", "__next__")],  # OpenCLIP tokenizes in the worker
        "forward_and_loss": [("open_clip/model.py", "forward"), ("open_clip/loss.py", "forward")],
        "backward": [("torch/_tensor.py", "backward")],
        "optimizer": [("torch/optim/adam.py", "step")],  # AdamW subclasses Adam
        "checkpoint": [("torch/serialization.py", "save")],
    },
    "ours": {
        "loop": [("eg_train/trainer.py", "_run_epoch")],  # the steps only (not the final validation)
        "data_wait": [("eg_train/data.py", "next")],  # the training loader only
        "micro_step": [("eg_train/trainer.py", "_micro_step")],  # forward + loss + backward
        "tokenize": [("open_clip/tokenizer.py", "__call__")],  # ours tokenizes in the main process
        "backward": [("torch/_tensor.py", "backward")],
        "optimizer": [("torch/optim/adam.py", "step")],
        "checkpoint": [("torch/serialization.py", "save")],
    },
}
PROFILE_COLUMNS = ("data_wait", "forward_and_loss", "backward", "optimizer", "checkpoint", "other")


def profile_summary(path: Path, parts: dict[str, list[tuple[str, str]]], steps: int) -> dict[str, float]:
    """Milliseconds per step of the loop and its parts; `other` = the loop minus the named parts."""
    stats = pstats.Stats(str(path)).stats  # {(file, line, func): (cc, nc, tt, ct, callers)}

    def outermost(file_part: str, name: str) -> float:
        return max((v[3] for (f, _, fn), v in stats.items() if file_part in f and fn == name), default=0.0)

    sec = {part: sum(outermost(f, n) for f, n in keys) for part, keys in parts.items()}
    if "micro_step" in sec:
        sec["forward_and_loss"] = sec.pop("micro_step") - sec["backward"]
    sec["other"] = sec["loop"] - sum(sec[k] for k in PROFILE_COLUMNS if k in sec)
    return {f"{k}_ms": 1e3 * v / steps for k, v in sec.items()}


def model_step_costs(work: Path, data: Path, config: Path, steps: int = 15) -> dict[str, dict[str, float]]:
    """Median ms of forward (+ loss), backward and AdamW step of the two models in this process, alternated
    step by step on one batch of the demo: the model math without either trainer or data loader.

    OpenCLIP: its CLIP.forward on pre-tokenized ids + its ClipLoss. Ours: the AlignmentModel our app
    builds from `config`, given the captions as strings (so its forward includes tokenization).
    """
    import open_clip
    import torch
    from eg_data import read_all
    from open_clip.loss import ClipLoss

    from apps.alignment.build import build_model
    from apps.alignment.config import AlignmentConfig
    from apps.common.config import load_config

    torch.set_num_threads(1)
    captions = [s["txt"].decode() for s in read_all(data)[:BATCH]]
    images = torch.randn(BATCH, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    name = f"local-dir:{work / 'model'}"
    clip, clip_loss = open_clip.create_model(name).train(), ClipLoss()
    ids = open_clip.get_tokenizer(name)(captions)
    ours = build_model(load_config(AlignmentConfig, config)).train()
    hyper = {"lr": 1e-3, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.1}
    optimizers = {
        "openclip": torch.optim.AdamW(clip.parameters(), **hyper),
        "ours": torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], **hyper),
    }
    forwards = {
        "openclip": lambda: clip_loss(*clip(images, ids)[:3]),
        "ours": lambda: ours({"image": images, "text": captions})["loss"],
    }
    times: dict[str, list[tuple[float, float, float]]] = {"openclip": [], "ours": []}
    for i in range(steps + 3):  # 3 warm-up steps each
        for who in ("openclip", "ours"):
            t0 = time.perf_counter()
            loss = forwards[who]()
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            optimizers[who].step()
            optimizers[who].zero_grad()
            if i >= 3:
                times[who].append((t1 - t0, t2 - t1, time.perf_counter() - t2))
    parts = ("forward_and_loss", "backward", "optimizer")
    return {
        who: {f"{p}_ms": 1e3 * statistics.median(col) for p, col in zip(parts, zip(*rows))}
        for who, rows in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/demo/train")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument(
        "--steps", type=int, default=92, help="steps per run (a multiple of OpenCLIP's epoch)"
    )
    parser.add_argument("--skip", type=int, default=10, help="steps before the timed region starts")
    parser.add_argument("--loss-steps", type=int, default=10)
    parser.add_argument("--work", default="outputs/bench_openclip")
    parser.add_argument("--out", default="outputs/bench_openclip.json")
    args = parser.parse_args()
    if (
        importlib.util.find_spec("pandas") is None
    ):  # open_clip_train imports it; open-clip-torch does not require it
        raise SystemExit(
            "pandas is missing (open_clip_train needs it): uv run --group bench benchmarks/bench_openclip.py"
        )
    data = (REPO / args.data).resolve()
    if not (data / "shards.json").is_file():
        raise SystemExit(f"--data {data}: no shards.json; build the demo first (uv run apps/data demo)")
    work = (REPO / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    write_model(work / "model")
    (work / "launch_open_clip_train.py").write_text(LAUNCHER)
    num_batches = -(-num_samples(data) // BATCH)  # OpenCLIP's batches per epoch (it rolls over)
    epochs = max(1, round(args.steps / num_batches))
    steps = epochs * num_batches
    py = sys.executable
    held_out = (
        data.parent
    )  # the demo's val/ and test/ (our app evaluates on test at the end, after the region)
    train = str(REPO / "apps" / "train" / "__main__.py")

    def openclip(
        name: str, log_every: int, epochs: int = epochs, prefix=(), data=data, extra=()
    ) -> list[str]:
        return [py, *prefix, *openclip_command(work, data, epochs, log_every, name, extra)]

    def ours(name: str, log_every: int, steps: int = steps, prefix=(), data=data, augment=True) -> list[str]:
        return [
            py,
            *prefix,
            train,
            "--config",
            str(ours_config(work, data, held_out, steps, log_every, name, augment)),
        ]

    results: dict[str, list[dict]] = {"openclip": [], "ours": []}
    for i in range(args.pairs):
        for who in ("openclip", "ours") if i % 2 == 0 else ("ours", "openclip"):
            name = f"{who}_pair{i}"
            if who == "openclip":
                events = run_timed(openclip(name, 5), work, openclip_step(num_batches), work / f"{name}.log")
            else:
                events = run_timed(ours(name, 10), work, ours_step, work / f"{name}.log")
            results[who].append(region(events, args.skip))
            r = results[who][-1]
            print(f"pair {i} {who:8s} {r['samples_per_s']:7.1f} samples/s over {r['region_s']:.1f} s "
                  f"({r['region_steps']} steps), start-up {r['startup_s']:.1f} s", flush=True)  # fmt: skip

    # the first steps' losses side by side (a loss at every step) on one fixed batch without augmentation
    # (OpenCLIP's crop at scale 1 is the whole 32 px image, as our resize + center crop): the same init
    # weights, the same batch, the same optimizer, so the curves should agree to float rounding
    n = args.loss_steps
    one_batch = write_one_batch_split(data, work / "one_batch" / "train")
    no_aug = ("--aug-cfg", "scale=(1.0,1.0)", "--save-frequency", "0")
    cmd = openclip("openclip_losses", 1, epochs=n, data=one_batch, extra=no_aug)
    run_timed(cmd, work, lambda _: None, work / "openclip_losses.log")
    openclip_losses = [float(x) for x in OPENCLIP_LOSS.findall((work / "openclip_losses.log").read_text())][
        :n
    ]
    cmd = ours("ours_losses", 1, steps=n, data=one_batch, augment=False)
    run_timed(cmd, work, lambda _: None, work / "ours_losses.log")
    with open(work / "ours_out" / "ours_losses" / "metrics.csv", newline="") as f:
        ours_losses = [float(row["loss"]) for row in csv.DictReader(f) if row.get("loss")][:n]

    # where the time goes: one cProfile'd run of each (the main process; the data worker is apart)
    prof = {}
    for who in ("openclip", "ours"):
        out = work / f"{who}.prof"
        cmd = (openclip if who == "openclip" else ours)(
            f"{who}_profile", 5 if who == "openclip" else 10, prefix=["-m", "cProfile", "-o", str(out)]
        )
        run_timed(cmd, work, lambda _: None, work / f"{who}_profile.log")
        prof[who] = profile_summary(out, PROFILE_PARTS[who], steps)

    step_costs = model_step_costs(
        work, data, ours_config(work, data, held_out, steps, 10, "step_costs", False)
    )
    med = {who: statistics.median(r["samples_per_s"] for r in rs) for who, rs in results.items()}
    startup = {who: statistics.median(r["startup_s"] for r in rs) for who, rs in results.items()}
    # each pair runs back to back under about the same machine load; the median of the pair ratios is the
    # comparison, the ratio of the medians a cross-check (the load of a shared machine drifts between pairs)
    pair_ratios = [
        o["samples_per_s"] / c["samples_per_s"] for o, c in zip(results["ours"], results["openclip"])
    ]
    ratio = statistics.median(pair_ratios)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared), {platform.platform()}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=REPO, capture_output=True, text=True).stdout.strip(),
        "model": MODEL_CFG,
        "batch_size": BATCH,
        "steps_per_run": steps,
        "skip_steps": args.skip,
        "runs": results,
        "median_samples_per_s": med,
        "median_startup_s": startup,
        "pair_ratios_ours_over_openclip": pair_ratios,
        "ratio_ours_over_openclip": ratio,
        "ratio_of_medians": med["ours"] / med["openclip"],
        "first_losses": {"openclip": openclip_losses, "ours": ours_losses},
        "profile": prof,
        "model_step_ms": step_costs,
        "goal": ">= 1.0",
    }  # fmt: skip
    out_path = REPO / args.out
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2))

    print("\nloss of the first steps (same init weights, one fixed batch of 64, no augmentation):")
    print(f"{'step':>4}  {'open_clip_train':>15}  {'ours':>8}")
    for s in range(max(len(openclip_losses), len(ours_losses))):
        a = f"{openclip_losses[s]:.4f}" if s < len(openclip_losses) else "-"
        b = f"{ours_losses[s]:.4f}" if s < len(ours_losses) else "-"
        print(f"{s + 1:>4}  {a:>15}  {b:>8}")
    print(
        f"\nwhere a step's time goes (ms per step, cProfile'd main process, {steps} steps; slower than unprofiled):"
    )
    keys = ["loop", *PROFILE_COLUMNS, "tokenize"]
    print(f"{'':16s}" + "".join(f"{k:>17s}" for k in keys))
    for who, label in (("openclip", "open_clip_train"), ("ours", "apps/train")):
        print(f"{label:16s}" + "".join(f"{prof[who].get(k + '_ms', 0.0):17.1f}" for k in keys))
    print("\nthe models alone, in one process, alternated step by step (median ms per step):")
    print(f"{'':16s}" + "".join(f"{k:>17s}" for k in ("forward_and_loss", "backward", "optimizer")))
    for who, label in (("openclip", "open_clip_train"), ("ours", "apps/train")):
        print(f"{label:16s}" + "".join(f"{v:17.1f}" for v in step_costs[who].values()))
    print(f"\nwrote {out_path}\n")
    print(f"{'trainer':16s} {'samples/s (median)':>19s} {'runs':>40s} {'start-up s':>11s}")
    for who, label in (("openclip", "open_clip_train"), ("ours", "apps/train")):
        runs = ", ".join(f"{r['samples_per_s']:.1f}" for r in results[who])
        print(f"{label:16s} {med[who]:19.1f} {runs:>40s} {startup[who]:11.1f}")
    print(f"apps/train / open_clip_train per pair: {', '.join(f'{r:.3f}' for r in pair_ratios)}")
    print(
        f"ratio (median of the pairs): {ratio:.3f}; ratio of the medians: {med['ours'] / med['openclip']:.3f} (goal >= 1.0)"
    )


if __name__ == "__main__":
    main()
