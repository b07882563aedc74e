"""Run by test_distributed.py in a fresh interpreter: 2 gloo ranks on CPU against one process.

Usage: python distributed_equivalence.py OUT.pt. For each case, every rank trains a tiny pair of linear
"encoders" on its slice of one global batch, backpropagates the contrastive (or Matryoshka) loss, and
all-reduces the mean of its gradients (what DDP does). The main process computes the same loss on the whole
batch with eg-losses 0.2's formula written out (eg_losses_reference.py), without torch.distributed and
without the library's loss code. Everything goes to OUT.pt for the test to compare.
"""

import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from eg_losses import ContrastiveLoss, ContrastiveLossConfig, MatryoshkaLoss, MatryoshkaLossConfig
from eg_losses_reference import reference_infonce, reference_mrl

WORLD = 2
IN_DIM, EMBED_DIM = 6, 8
MRL = {"dims": [2, 4, 8], "weights": [0.5, 1.0, 2.0]}
# name -> (local_loss, rows per rank, drop these global rows via the valid mask, Matryoshka settings or None)
CASES = {
    "full": (False, [3, 3], [], None),
    "local": (True, [3, 3], [], None),
    "full_uneven_masked": (False, [3, 2], [1, 4], None),
    "local_uneven_masked": (True, [3, 2], [1, 4], None),
    "local_matryoshka_masked": (True, [3, 3], [0, 5], MRL),
    "full_matryoshka_uneven_masked": (False, [4, 3], [1, 5], MRL),
    "local_matryoshka_uneven_masked": (True, [4, 3], [1, 5], MRL),
    "full_matryoshka_one_dim": (False, [3, 3], [2], {**MRL, "sample_single_mrl_dim": True, "seed": 1}),
    "local_matryoshka_two_dims": (True, [4, 3], [2], {**MRL, "num_sampled_dims": 2, "seed": 2}),
}


def _build(case: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    local_loss, sizes, dropped, matryoshka = CASES[case]
    torch.manual_seed(0)
    encoders = torch.nn.ModuleList([torch.nn.Linear(IN_DIM, EMBED_DIM), torch.nn.Linear(IN_DIM, EMBED_DIM)])
    loss = ContrastiveLoss(ContrastiveLossConfig(local_loss=local_loss))
    if matryoshka is not None:
        loss = MatryoshkaLoss(loss, EMBED_DIM, MatryoshkaLossConfig(**matryoshka))
    model = torch.nn.ModuleDict({"encoders": encoders, "loss": loss})
    n = sum(sizes)
    x, y = torch.randn(n, IN_DIM), torch.randn(n, IN_DIM)
    valid = torch.ones(n, dtype=torch.bool)
    valid[dropped] = False
    return model, x, y, valid


def _loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    a, b = model["encoders"][0](x), model["encoders"][1](y)
    return model["loss"](a, b, valid=valid)


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _rank_main(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    results = {}
    for case in CASES:
        model, x, y, valid = _build(case)
        sizes = CASES[case][1]
        start = sum(sizes[:rank])
        rows = slice(start, start + sizes[rank])
        loss = _loss(model, x[rows], y[rows], valid[rows])
        loss.backward()
        grads = _grads(model)
        for g in grads.values():
            dist.all_reduce(g)
            g /= WORLD
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        results[case] = {"rank_loss": loss.detach(), "mean_loss": mean_loss / WORLD, "grads": grads}
    torch.save(results, f"{out}.rank{rank}")
    dist.destroy_process_group()


def _reference_loss(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """The loss of the whole batch by the 0.2 formula, with the model's encoders and temperature parameter."""
    a, b = model["encoders"][0](x), model["encoders"][1](y)
    loss = model["loss"]
    if isinstance(loss, MatryoshkaLoss):  # the same seeded draw as the ranks make
        weight_of = dict(zip(loss.dims, loss.weights))
        return reference_mrl(a, b, valid, loss.loss.log_logit_scale.exp(), loss.select_dims(), weight_of)[0]
    return reference_infonce(a, b, valid, loss.log_logit_scale.exp())


def main(out: str) -> None:
    reference = {}
    for case in CASES:
        model, x, y, valid = _build(case)
        loss = _reference_loss(model, x, y, valid)
        loss.backward()
        reference[case] = {"loss": loss.detach(), "grads": _grads(model)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(port, out), nprocs=WORLD)
    ranks = [torch.load(f"{out}.rank{r}", weights_only=True) for r in range(WORLD)]
    torch.save({"reference": reference, "ranks": ranks}, out)


if __name__ == "__main__":
    main(sys.argv[1])
