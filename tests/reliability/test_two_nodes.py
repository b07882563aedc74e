"""Two nodes on one machine: README's multi-node command, as written there, run as two torchrun agents
(`--nnodes 2 --node_rank {0,1} --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:PORT`, gloo
over loopback), each in a folder of its own (the nodes share no disk but the data and models), on the
suite's 2-rank stage-1 run: the weights equal the single-node 2-process run's, and only the node of rank 0
writes checkpoints, metrics and logs."""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_runs import DDP_OVERRIDES, MAX_STEPS, base_config, checkpoint_dir, differences, load

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import REPO, TRAIN_SCRIPT, app_env, write_config


def readme_multinode_command() -> str:
    """README's multi-node torchrun command (its continuation lines joined, the comment dropped)."""
    text = (REPO / "README.md").read_text()
    found = re.search(r"^uv run torchrun --nnodes .*?(?<!\\)\n", text, flags=re.MULTILINE | re.DOTALL)
    assert found, "README.md has no `uv run torchrun --nnodes` command"
    return found.group(0).replace("\\\n", " ").split("#")[0].strip()


def node_command(readme: str, node_rank: int, port: int, config: Path) -> list[str]:
    """The README command for one node of this machine: 1 process, the rendezvous on loopback, the test's
    config; every other word as README writes it."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    swaps = {
        "uv run torchrun": torchrun,
        "--node_rank 0": f"--node_rank {node_rank}",
        "--nproc_per_node 8": "--nproc_per_node 1",
        "HOST:29500": f"127.0.0.1:{port}",
        "apps/train/__main__.py": str(TRAIN_SCRIPT),
        "configs/pixmo_alignment.yaml": str(config),
    }
    command = readme
    for old, new in swaps.items():
        assert command.count(old) == 1, f"README's multi-node command lost {old!r}: {readme}"
        command = command.replace(old, new)
    return shlex.split(command)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_train_as_one_node(ddp_reference: Path, suite_root: Path, tmp_path: Path) -> None:
    readme = readme_multinode_command()
    assert "--nnodes 2" in readme and "--rdzv_backend c10d" in readme
    port, nodes = free_port(), [tmp_path / "node0", tmp_path / "node1"]
    procs = []
    for rank, node in enumerate(nodes):
        node.mkdir()
        config = write_config(node, base_config(suite_root, **DDP_OVERRIDES))
        log = {s: (node / f"{s}.log").open("w") for s in ("stdout", "stderr")}
        # node 0 starts first: c10d numbers the agents by (host, pid), so its lower pid makes it rank 0
        procs.append(
            subprocess.Popen(
                node_command(readme, rank, port, config),
                cwd=node,
                env=app_env(),
                stdout=log["stdout"],
                stderr=log["stderr"],
            )
        )
    codes = [proc.wait(timeout=300) for proc in procs]
    logs = [{s: (node / f"{s}.log").read_text() for s in ("stdout", "stderr")} for node in nodes]
    assert codes == [0, 0], [log["stderr"][-2000:] for log in logs]
    # rank 0's node wrote the checkpoints once, the metrics and the log lines; rank 1's node nothing
    assert sorted(p.name for p in nodes[1].iterdir()) == ["stderr.log", "stdout.log", "tiny.yaml"]
    assert "eg-train:" not in logs[1]["stdout"] + logs[1]["stderr"] and not logs[1]["stdout"].strip()
    assert "held-out retrieval (test, 24 samples" in logs[0]["stdout"]  # the app's report, on rank 0
    assert (nodes[0] / "outputs" / "tiny" / "metrics.csv").is_file()
    ours, single = checkpoint_dir(nodes[0]), checkpoint_dir(ddp_reference)
    assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in single.iterdir())
    got, want = load(ours / "checkpoint_latest.pt"), load(single / "checkpoint_latest.pt")
    assert got["step"] == want["step"] == MAX_STEPS and got["world_size"] == 2 and len(got["ranks"]) == 2
    assert sorted(got["model"]) == sorted(want["model"])
    for name, value in want["model"].items():
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):  # extra state, counters
            assert not differences(got["model"][name], value), name
            continue
        worst = (got["model"][name].double() - value.double()).abs().max().item()
        assert worst <= 1e-6, f"{name}: max |two nodes - one node| = {worst:.3g}"
