"""A tiny regression model and deterministic data for eg-train's tests; also a script for subprocess runs.

Script use: `python toy_train.py '<json options>'` (see `run_from_options`); torchrun-compatible.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import eg_train
import torch
from eg_train import checkpoint as ck
from torch import nn


class ToyData:
    """n samples of y = w.x + noise; each epoch a seeded permutation, split into global batches by rank.

    Implements set_epoch(epoch, start_batch) and __len__, the trainer's exact-resume contract.
    """

    def __init__(
        self, n: int = 64, batch_size: int = 8, dim: int = 4, rank: int = 0, world: int = 1, seed: int = 0
    ) -> None:
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, dim, generator=g)  # (N, D)
        self.y = self.x @ torch.linspace(-1, 1, dim) + 0.1 * torch.randn(n, generator=g)  # (N,)
        self.n, self.batch_size, self.rank, self.world, self.seed = n, batch_size, rank, world, seed
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world)

    def batch_indices(self, epoch: int, b: int) -> torch.Tensor:
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
        g = self.batch_size * self.world
        return perm[b * g + self.rank * self.batch_size : b * g + (self.rank + 1) * self.batch_size]

    def __iter__(self):
        torch.empty((), dtype=torch.int64).random_()  # what a DataLoader does at iter(): one global RNG draw
        for b in range(self.start_batch, len(self)):
            idx = self.batch_indices(self.epoch, b)
            yield {"x": self.x[idx], "y": self.y[idx], "index": idx, "key": [f"s{i}" for i in idx.tolist()]}


class ReportingToyData(ToyData):
    """ToyData with eg-data's `data_report()`: cumulative within the epoch on this rank, reset by set_epoch,
    counting the batches yielded so far. Samples with index % 7 == 3 count as corrupt_image, % 11 == 5 as
    truncated_tar (still yielded: what is tested is the counting); empty_caption never happens."""

    REASONS = ("corrupt_image", "empty_caption", "truncated_tar")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reset()

    def _reset(self) -> None:
        self.num_samples = 0
        self.bad = dict.fromkeys(self.REASONS, 0)
        self.examples: dict[str, str] = {}

    @staticmethod
    def reason(index: int) -> str | None:
        return "corrupt_image" if index % 7 == 3 else "truncated_tar" if index % 11 == 5 else None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        super().set_epoch(epoch, start_batch)
        self._reset()

    def __iter__(self):
        for batch in super().__iter__():
            for i in batch["index"].tolist():
                self.num_samples += 1
                if (reason := self.reason(i)) is not None:
                    self.bad[reason] += 1
                    self.examples.setdefault(reason, f"s{i}")
            yield batch

    def data_report(self) -> dict[str, Any]:
        return {"samples": self.num_samples, "bad": dict(self.bad), "examples": dict(self.examples)}


class ToyDataset(torch.utils.data.Dataset):
    """The same samples as a map-style dataset, for DataLoader(shuffle=True) (no set_epoch)."""

    def __init__(self, n: int = 64, dim: int = 4) -> None:
        self.data = ToyData(n=n, dim=dim)

    def __len__(self) -> int:
        return self.data.n

    def __getitem__(self, i: int) -> dict:
        return {"x": self.data.x[i], "y": self.data.y[i], "index": torch.tensor(i)}


class ToyModel(nn.Module):
    """Linear -> Tanh -> Dropout -> Linear; loss = mse + 0.1 * l1; reports parts and what it saw."""

    def __init__(self, dim: int = 4, hidden: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.register_buffer("num_forward", torch.zeros((), dtype=torch.long))
        self.nan_at_calls: set[int] = set()  # training forward calls (1-based) that return a NaN loss
        self.calls = 0
        self.seen_autocast: list[tuple[bool, torch.dtype, torch.dtype]] = []

    def forward(self, batch: dict) -> dict:
        x, y = batch["x"], batch["y"]  # (B, D), (B,)
        h = self.net[0](x)
        self.seen_autocast.append(
            (torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type), h.dtype)
        )
        pred = self.net[3](self.net[2](self.net[1](h))).squeeze(-1).float()  # (B,)
        mse = ((pred - y) ** 2).mean()
        l1 = (pred - y).abs().mean()
        loss = mse + 0.1 * l1
        if self.training:
            self.calls += 1
            self.num_forward += 1
            if self.calls in self.nan_at_calls:
                loss = loss * float("nan")
        idx = batch["index"].double()
        # sample fingerprints: equal per step iff the same samples were consumed
        return {
            "loss": loss,
            "mse": mse,
            "l1": l1,
            "index_mean": idx.mean(),
            "index_sq_mean": (idx**2).mean(),
        }


class ExtraStateSampler(nn.Module):
    """Draws a prefix width per call from a generator it saves only through get_extra_state (held inside
    a dict, so the trainer's scan for generator attributes cannot see it): like eg-losses' MatryoshkaLoss."""

    def __init__(self, widths: list[int], seed: int) -> None:
        super().__init__()
        self.widths = widths
        self.rngs = {"draw": torch.Generator().manual_seed(seed)}

    def draw(self) -> int:
        return self.widths[int(torch.randint(len(self.widths), (1,), generator=self.rngs["draw"]))]

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return {"generator": self.rngs["draw"].get_state()}

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.rngs["draw"].set_state(state["generator"])


class AttributeNoise(nn.Module):
    """Holds a torch.Generator as a plain attribute and no extra state: only the trainer's generic capture
    of module generators keeps its draws exact across a resume."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, n: int) -> torch.Tensor:
        return 0.05 * torch.randn(n, generator=self.generator)  # (n,)


class SampledToyModel(ToyModel):
    """ToyModel whose training forward uses a sampled hidden width and sampler noise, plus dropout."""

    def __init__(self, dim: int = 4, hidden: int = 16, dropout: float = 0.2) -> None:
        super().__init__(dim, hidden, dropout)
        self.sampler = ExtraStateSampler([4, 8, 16], seed=11)
        self.noise = AttributeNoise(seed=5)

    def forward(self, batch: dict) -> dict:
        if not self.training:
            return super().forward(batch)
        x, y = batch["x"], batch["y"]  # (B, D), (B,)
        width = self.sampler.draw()
        h = self.net[2](self.net[1](self.net[0](x)))  # (B, H)
        keep = (torch.arange(h.shape[-1]) < width).to(h.dtype)  # (H,)
        pred = self.net[3](h * keep).squeeze(-1) + self.noise(len(y))  # (B,)
        loss = ((pred - y) ** 2).mean()
        self.calls += 1
        self.num_forward += 1
        idx = batch["index"].double()
        return {"loss": loss, "width": torch.tensor(float(width)), "index_mean": idx.mean()}


def make_config(out: Path, **overrides: Any) -> eg_train.TrainerConfig:
    """A fast CPU config writing under `out`."""
    base: dict[str, Any] = {
        "output_dir": str(out / "outputs"),
        "checkpoint_dir": str(out / "checkpoints"),
        "max_steps": 10,
        "lr": 0.05,
        "warmup_steps": 2,
        "schedule": "cosine",
        "min_lr_ratio": 0.1,
        "grad_clip": 1.0,
        "log_every": 1,
        "device": "cpu",
        "progress_bar": False,
        "tensorboard": False,
        "plots": False,
        "seed": 7,
    }
    base.update(overrides)
    return eg_train.TrainerConfig(**base)


def read_rows(path: Path) -> list[dict[str, str]]:
    """metrics.csv rows as dicts of strings."""
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_from_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Build model, data and Trainer from `opts` and fit (used in-process and as a script)."""
    info = eg_train.init_distributed("cpu")
    eg_train.seed_everything(0)
    if opts.get("model") == "sampled":
        model: ToyModel = SampledToyModel(dropout=opts.get("dropout", 0.2))
    else:
        model = ToyModel(dropout=opts.get("dropout", 0.0))
    kind = opts.get("data", "positioned")
    if kind == "loader":
        data = torch.utils.data.DataLoader(ToyDataset(), batch_size=opts.get("batch_size", 8), shuffle=True)
    else:
        cls = ReportingToyData if kind == "reporting" else ToyData
        data = cls(batch_size=opts.get("batch_size", 8), rank=info.rank, world=info.world_size)
    kill_at = opts.get("kill_at_call", 0)
    if kill_at:
        inner_forward = model.forward

        def killed_forward(batch: dict) -> dict:
            if model.training and model.calls + 1 == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # a real SIGKILL in the middle of a step
            return inner_forward(batch)

        model.forward = killed_forward
    if opts.get("sleep"):
        inner = model.forward

        def slow_forward(batch: dict) -> dict:
            time.sleep(opts["sleep"])  # gives the parent time to kill at an arbitrary step
            return inner(batch)

        model.forward = slow_forward
    hang_at = opts.get("hang_at_latest_write", 0)
    if hang_at:
        real_write, writes = ck.atomic_write, [0]

        def hanging_write(path: Path, data: bytes) -> None:
            if path.name == ck.LATEST:
                writes[0] += 1
                if writes[0] == hang_at:
                    tmp = path.parent / f".{path.name}.tmp.1"
                    with open(tmp, "wb") as f:
                        f.write(data[: len(data) // 2])  # half-written temp file, as a crash would leave
                        f.flush()
                    print("HANGING_IN_SAVE", flush=True)
                    time.sleep(120)
            real_write(path, data)

        ck.atomic_write = hanging_write
    cfg = make_config(Path(opts["dir"]), **opts.get("config", {}))
    summary = eg_train.Trainer(model, cfg, data).fit()
    if info.is_main and opts.get("params_out"):
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, opts["params_out"])
    return summary


if __name__ == "__main__":
    run_from_options(json.loads(sys.argv[1]))
