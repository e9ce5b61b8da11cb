"""torchrun restarts and timeouts: a restarted worker group joins afresh and resumes exactly; a stopped worker ends
the run within the timeout, with one line. The torchrun tests are marked multinode: pytest -m multinode tests/training
"""
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist
from test_multinode import (
    AGENT_TIMEOUT_S, MODULE, TWO_PROCESSES, assert_same_training, free_port, kill_quietly, quiet_run,
    run_one_process, worker_pids,
)  # fmt: skip

from linformer_pt.training.checkpoint import load_checkpoint
from linformer_pt.training.elastic import PREFIX, agree_on_group_number, peer_failure, resume_line


# ---- in one process ---------------------------------------------------------------------------------------------
def test_a_new_worker_group_never_reads_what_a_dead_one_left_in_the_store():
    """torchrun's agent keeps its store across restarts: the keys of a dead group must not reach the next one."""
    server = dist.TCPStore("127.0.0.1", free_port(), is_master=True, wait_for_workers=False)
    stale = {f"{PREFIX}/ask/1": "feedc0de", f"{PREFIX}/answer/feedc0de": "1", f"{PREFIX}/ask/2": "0ddba11"}
    for key, value in stale.items():  # a first group that died half-way through agreeing
        server.set(key, value)
    server.add(f"{PREFIX}/count", 1)
    numbers, timeout = {}, timedelta(seconds=30)

    def join(rank: int) -> None:
        client = dist.TCPStore("127.0.0.1", server.port, is_master=False)
        time.sleep(0.3 * rank)  # rank 0 starts answering before the others ask afresh
        numbers[rank] = agree_on_group_number(client, rank, 3, timeout)

    threads = [threading.Thread(target=join, args=(rank,)) for rank in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert numbers == {0: 2, 1: 2, 2: 2}


def test_the_resume_line_names_the_elastic_restart(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    assert resume_line(None) is None
    assert resume_line(Path("ck/checkpoint_last.pt")) == "resuming from ck/checkpoint_last.pt"
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "2")
    assert resume_line(Path("ck/checkpoint_last.pt")) == "elastic restart 2: resuming from ck/checkpoint_last.pt"
    assert resume_line(None).startswith("elastic restart 2: no checkpoint written yet")


def collective_error(message: str) -> BaseException:
    """An error raised the way a failed gloo collective raises it (inside train_step)."""
    def train_step() -> None:
        raise dist.DistBackendError(message)

    try:
        train_step()
    except dist.DistBackendError as err:
        return err
    raise AssertionError("unreachable")


def test_collective_failures_become_one_line_naming_rank_and_phase():
    timeout, last = timedelta(seconds=12), Path("run/checkpoints/checkpoint_last.pt")
    line = peer_failure(collective_error("[gloo] Timed out waiting 12000ms for recv operation to complete"), 1,
                        timeout, 7, last)  # fmt: skip
    assert line.startswith("rank 1: a collective timed out after 12 s waiting for another process while training "
                           "update 8")  # fmt: skip
    assert line.endswith(f"the last checkpoint is {last}") and "\n" not in line
    gloo = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:28586: Connection "
            "reset by peer. This is typically caused by a remote peer...")  # fmt: skip
    line = peer_failure(collective_error(gloo), 0, timeout, 3, None)
    assert line == ("rank 0: lost contact with another process while training update 4 (Read error [127.0.0.1]:28586: "
                    "Connection reset by peer); no checkpoint was written yet")  # fmt: skip
    assert peer_failure(RuntimeError("CUDA out of memory"), 0, timeout, 3, None) is None
    assert peer_failure(ValueError("timed out"), 0, timeout, 3, None) is None
    assert peer_failure(TimeoutError("timed out"), 0, timeout, 3, None) is None  # e.g. a download: not a peer


# ---- torchrun -------------------------------------------------------------------------------------------------------
def standalone_agent(overrides, run_dir: Path, max_restarts: int = 0) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               f"--max-restarts={max_restarts}", *MODULE, *overrides, *TWO_PROCESSES,
               f"hydra.run.dir={run_dir}"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, agent: subprocess.Popen, deadline_s: float = AGENT_TIMEOUT_S) -> None:
    """Until `path` exists (or fail when the agent ends first or time runs out)."""
    deadline = time.monotonic() + deadline_s
    while not path.exists():
        assert agent.poll() is None, f"the run ended before {path.name} was written:\n{agent.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"no {path} after {deadline_s} s"
        time.sleep(0.02)


def worker(agent: subprocess.Popen, rank: int) -> int:
    deadline = time.monotonic() + 60
    while rank not in (pids := worker_pids(agent)):
        assert time.monotonic() < deadline, f"no worker of rank {rank} under the agent"
        time.sleep(0.05)
    return pids[rank]


@pytest.mark.multinode
@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_worker_is_restarted_and_the_run_resumes_exactly(victim, cache_dir, tmp_path):
    updates = 40
    common = [*quiet_run(cache_dir, updates), "checkpoint.save_interval_updates=4"]
    run_one_process(common, tmp_path / "one")
    run = tmp_path / "two"
    agent = standalone_agent(common, run, max_restarts=1)
    try:
        wait_for(run / "checkpoints" / "checkpoint_last.pt", agent)  # first written at update 4
        kill_quietly(worker(agent, victim), signal.SIGKILL)  # rank 0 may be writing its next checkpoint
        out, err = agent.communicate(timeout=AGENT_TIMEOUT_S)
    finally:
        kill_quietly(agent.pid, signal.SIGKILL)
    assert agent.returncode == 0, err[-3000:]
    restarts = [line for line in out.splitlines() if line.startswith("elastic restart 1: resuming from")]
    assert restarts == [f"elastic restart 1: resuming from {run / 'checkpoints' / 'checkpoint_last.pt'}"]
    assert_same_training(tmp_path / "one", run, updates)


@pytest.mark.multinode
def test_a_stopped_worker_ends_the_run_with_one_line_and_a_loadable_checkpoint(cache_dir, tmp_path):
    common = [*quiet_run(cache_dir, 100_000), "checkpoint.save_interval_updates=4",
              "trainer.distributed_timeout_minutes=0.2"]  # fmt: skip
    run = tmp_path / "run"
    agent = standalone_agent(common, run)
    stopped = None
    try:
        wait_for(run / "checkpoints" / "checkpoint_last.pt", agent)  # first written at update 4
        stopped = worker(agent, 1)
        kill_quietly(stopped, signal.SIGSTOP)
        out, err = agent.communicate(timeout=AGENT_TIMEOUT_S)  # rank 0 gives up; the agent then kills rank 1
    finally:
        if stopped is not None:
            kill_quietly(stopped, signal.SIGCONT)
            kill_quietly(stopped, signal.SIGKILL)
        kill_quietly(agent.pid, signal.SIGKILL)
    assert agent.returncode != 0
    said = [line for line in (out + err).splitlines() if "a collective timed out" in line]
    assert len(said) == 1, out + err
    assert said[0].startswith("linformer-train: error: rank 0: a collective timed out after 12 s waiting for another "
                              "process while ")  # fmt: skip
    last = run / "checkpoints" / "checkpoint_last.pt"
    assert said[0].endswith(f"the last checkpoint is {last}")
    assert load_checkpoint(last)["update"] >= 4
    assert "rank 0: a collective timed out" in (run / "summary.json").read_text()  # status failed, with the line
