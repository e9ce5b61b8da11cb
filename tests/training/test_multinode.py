"""Two torchrun nodes on one machine (c10d rendezvous): they train like one process at the same global batch, and a
run folder the nodes do not share is refused. Marked multinode: pytest -m multinode tests/training
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence

import pytest
import torch

from linformer_pt.training.checkpoint import load_checkpoint

MODULE = ["-m", "linformer_pt.cli.train"]
AGENT_TIMEOUT_S = 300  # every subprocess ends within this (a hang fails the test instead of stalling it)


def quiet_run(cache_dir: Path, max_update: int = 4) -> List[str]:
    """test_torchrun.py's overrides: no dropout, a train record per update, one thread per process."""
    return [
        "experiment=smoke", f"dataset.cache_dir={cache_dir}", "logging.tensorboard=false",
        "logging.progress_bar=false", "model.dropout=0", "model.attention_dropout=0",
        f"optimization.max_update={max_update}", "logging.log_interval=1", "optimization.validate_interval_updates=0",
        "common.threads=1",
    ]  # fmt: skip


TWO_PROCESSES = ["optimization.update_freq=2", "dataset.batch_size=4"]  # 2 x 4 x 2 = one process at batch 16
ONE_PROCESS = ["dataset.batch_size=16"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_records(run_dir: Path) -> List[Dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"train"' in line]


def run_one_process(overrides: Sequence[str], run_dir: Path) -> None:
    one = subprocess.run([sys.executable, *MODULE, *overrides, *ONE_PROCESS, f"hydra.run.dir={run_dir}"],
                         capture_output=True, text=True, timeout=AGENT_TIMEOUT_S)  # fmt: skip
    assert one.returncode == 0, one.stderr


def assert_same_training(reference: Path, other: Path, updates: int) -> None:
    """The same loss at every update, each update logged once, and the same final weights."""
    single, double = train_records(reference), train_records(other)
    assert [r["update"] for r in double] == list(range(1, updates + 1))
    for a, b in zip(single, double):
        assert abs(a["loss"] - b["loss"]) < 1e-5 * a["loss"], (a, b)
    params_one = load_checkpoint(reference / "checkpoints" / "checkpoint_last.pt")["model"]
    params_two = load_checkpoint(other / "checkpoints" / "checkpoint_last.pt")["model"]
    for name, value in params_one.items():
        torch.testing.assert_close(params_two[name], value, rtol=1e-4, atol=1e-5, msg=name)


def node_agents(overrides_per_node: Sequence[Sequence[str]]) -> List[subprocess.Popen]:
    """One torchrun agent per node, all on this machine, meeting at a c10d rendezvous on a free port."""
    port = free_port()
    agents = []
    for node, overrides in enumerate(overrides_per_node):
        command = [
            sys.executable, "-m", "torch.distributed.run", f"--nnodes={len(overrides_per_node)}",
            f"--node-rank={node}", "--nproc-per-node=1", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=test{port}", *MODULE, *overrides,
        ]  # fmt: skip
        agents.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return agents


def finish(agents: List[subprocess.Popen]) -> List[subprocess.CompletedProcess]:
    """Wait for every agent (killing all of them if one overruns the timeout)."""
    done = []
    try:
        for agent in agents:
            out, err = agent.communicate(timeout=AGENT_TIMEOUT_S)
            done.append(subprocess.CompletedProcess(agent.args, agent.returncode, out, err))
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.communicate()
    return done


@pytest.mark.multinode
def test_two_nodes_train_like_one_process_and_only_rank_0_writes(cache_dir, tmp_path):
    common = quiet_run(cache_dir)
    run_one_process(common, tmp_path / "one")
    shared = [*common, *TWO_PROCESSES, f"hydra.run.dir={tmp_path / 'two'}"]
    nodes = finish(node_agents([shared, shared]))
    for node in nodes:
        assert node.returncode == 0, node.stderr[-3000:]
    stdout = "".join(node.stdout for node in nodes)
    assert stdout.count("distributed: 2 processes") == 1  # said by global rank 0 only, whichever node holds it

    assert_same_training(tmp_path / "one", tmp_path / "two", updates=4)  # each update logged once: one writer
    run = tmp_path / "two"
    assert (run / "train.log").read_text().count("distributed: 2 processes") == 1
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    assert (run / ".hydra" / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint_best.pt", "checkpoint_last.pt"]
    assert not (run / ".shared_folder_check").exists()


@pytest.mark.multinode
def test_a_run_folder_the_nodes_do_not_share_is_refused(cache_dir, tmp_path):
    # Each agent's processes resolve hydra.run.dir from their own command line: two folders stand for one path
    # that is a different disk on each node.
    common = [*quiet_run(cache_dir), *TWO_PROCESSES, "trainer.distributed_timeout_minutes=0.2"]
    nodes = finish(node_agents([[*common, f"hydra.run.dir={tmp_path / f'node{n}'}"] for n in range(2)]))
    assert all(node.returncode != 0 for node in nodes)
    stderr = "".join(node.stderr for node in nodes)
    refusals = [line for line in stderr.splitlines() if "must be on a filesystem shared by all nodes" in line]
    assert refusals
    assert all("rank 1 (host" in line and "cannot see the files rank 0 writes" in line for line in refusals)
    for n in range(2):  # nothing trained, on either side
        assert not (tmp_path / f"node{n}" / "checkpoints").exists()
        assert not (tmp_path / f"node{n}" / "metrics.jsonl").exists()


@pytest.mark.multinode
def test_nodes_that_built_different_tokenizers_are_refused(cache_dir, tmp_path):
    # Data caches local to each node that came out differently (here: another vocabulary size on one node).
    common = [*quiet_run(cache_dir), *TWO_PROCESSES, f"hydra.run.dir={tmp_path / 'run'}"]
    nodes = finish(node_agents([common, [*common, "tokenizer.vocab_size=1500"]]))
    assert all(node.returncode != 0 for node in nodes)
    stderr = "".join(node.stderr for node in nodes)
    assert "has another tokenizer than rank 0" in stderr and "rank 1 (host" in stderr, stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def worker_pids(agent: subprocess.Popen) -> Dict[int, int]:
    """rank -> pid of the agent's worker processes now running (its children, ranks read from their environment)."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or f"PPid:\t{agent.pid}\n" not in (proc / "status").read_text():
                continue
            items = (proc / "environ").read_text().split("\0")
            env = dict(item.split("=", 1) for item in items if "=" in item)
        except OSError:  # it just exited
            continue
        if "RANK" in env:
            found[int(env["RANK"])] = int(proc.name)
    return found


def kill_quietly(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
