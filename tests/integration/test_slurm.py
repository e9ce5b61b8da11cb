"""Slurm through Hydra's submitit launcher: a 2-task job equals one process at double batch, also when requeued,
and also when its two tasks run on two nodes.

Needs a running cluster (scripts/slurm_local.sh starts a one-node one; `SLURM_LOCAL_NODES=2` two nodes on this
machine, which the 2-node test needs) and `pip install -e '.[slurm]'`; the default test run skips these
(pytest.ini: -m "not slurm"). Run them with: pytest -m slurm tests/integration
"""
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest

pytestmark = pytest.mark.slurm

UPDATES = 80  # ~0.1 s an update for the smoke model on one CPU: time enough to requeue the job mid-run
BATCH = 8  # per Slurm task; the reference process trains at 2 * BATCH
PREEMPT_AFTER = 10  # train records in metrics.jsonl before the job is requeued


def cluster_problem() -> Optional[str]:
    """Why these tests cannot run here, or None."""
    for tool in ("sinfo", "sbatch", "scontrol", "srun"):
        if shutil.which(tool) is None:
            return f"no `{tool}`: these tests need Slurm (scripts/slurm_local.sh starts a one-node cluster)"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 30 s: is slurmctld running? (scripts/slurm_local.sh)"
    if states.returncode != 0:
        return f"the Slurm cluster is not up (sinfo: {states.stderr.strip()}); start it with scripts/slurm_local.sh"
    if not re.search(r"^(idle|mix)", states.stdout, flags=re.M):
        return f"no idle Slurm node (sinfo states: {' '.join(states.stdout.split()) or 'none'})"
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        return "hydra-submitit-launcher is not installed (pip install -e '.[slurm]')"
    return None


@pytest.fixture(scope="module", autouse=True)
def slurm_cluster() -> None:
    problem = cluster_problem()
    if problem:
        pytest.skip(problem)


def common_overrides(cache_dir: Path) -> List[str]:
    """A smoke run long enough to interrupt, deterministic (no dropout) and logging every update."""
    return [
        "experiment=smoke", f"dataset.cache_dir={cache_dir}", "logging.tensorboard=false", "logging.progress_bar=false",
        f"optimization.max_update={UPDATES}", "checkpoint.save_interval_updates=0", "model.dropout=0",
        "model.attention_dropout=0", "logging.log_interval=1", "common.threads=1",
    ]  # fmt: skip


def train_records(run_dir: Path) -> List[Dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("split") == "train"]


def assert_same_losses(reference: List[Dict], records: List[Dict]) -> None:
    assert [r["update"] for r in records] == list(range(1, UPDATES + 1)), "each update logged exactly once"
    for a, b in zip(reference, records):
        assert abs(a["loss"] - b["loss"]) < 1e-5 * a["loss"], f"update {a['update']}: {b['loss']} != {a['loss']}"
        assert abs(a["gnorm"] - b["gnorm"]) < 1e-4 * a["gnorm"], f"update {a['update']}: grad norm differs"


@pytest.fixture(scope="module")
def reference(cache_dir, tmp_path_factory) -> List[Dict]:
    """The uninterrupted run: one local process at the Slurm job's global batch (two tasks at BATCH)."""
    run_dir = tmp_path_factory.mktemp("reference")
    done = subprocess.run(
        [sys.executable, "-m", "linformer_pt.cli.train", *common_overrides(cache_dir),
         f"dataset.batch_size={2 * BATCH}", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=600, cwd=run_dir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    records = train_records(run_dir)
    assert len(records) == UPDATES
    return records


class SlurmSweep:
    """`linformer-train --multirun hydra/launcher=slurm_cpu ...` in the background, and its one Slurm job."""

    def __init__(self, cache_dir: Path, root: Path, launcher: Sequence[str] = ()) -> None:
        self.root = root / "multirun"  # the sweep dir is <root>/multirun/<time of submission>
        self.log = root / "launcher.log"
        command = [
            sys.executable, "-m", "linformer_pt.cli.train", "--multirun", "hydra/launcher=slurm_cpu", *launcher,
            *common_overrides(cache_dir), f"dataset.batch_size={BATCH}",
            # ${now:} with microseconds: were it resolved again when the job is requeued, the requeued job would
            # run in another folder and start from scratch.
            f"hydra.sweep.dir='{self.root}/${{now:%H-%M-%S-%f}}'", "hydra.sweep.subdir=run",
        ]  # fmt: skip
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        self.job_id = ""

    def output(self) -> str:
        return self.log.read_text()[-4000:]

    def sweep_dirs(self) -> List[Path]:
        return sorted(self.root.iterdir()) if self.root.exists() else []

    @property
    def run_dir(self) -> Path:
        return self.sweep_dirs()[0] / "run"

    def wait_for(self, condition, what: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                status = self.process.returncode
                pytest.fail(f"the launcher exited ({status}) while waiting for {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout:.0f} s:\n{self.output()}")
            time.sleep(0.2)

    def wait_for_job(self) -> str:
        """The Slurm job id: submitit names the job's log folder after it (<sweep dir>/.submitit/<job id>)."""

        def submitted() -> bool:
            jobs = [p.name for d in self.sweep_dirs() if (d / ".submitit").exists() for p in (d / ".submitit").iterdir()
                    if p.is_dir()]  # fmt: skip
            self.job_id = jobs[0] if jobs else ""
            return bool(jobs)

        self.wait_for(submitted, "Slurm job", timeout=120)
        return self.job_id

    def job_info(self) -> Dict[str, str]:
        """JobState, Reason, Restarts, ... of the job as `scontrol show job` gives them."""
        shown = subprocess.run(["scontrol", "show", "job", self.job_id], capture_output=True, text=True, timeout=60)
        return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))

    def job_state(self) -> str:
        return self.job_info().get("JobState", "")

    def job_nodes(self) -> List[str]:
        nodelist = self.job_info().get("NodeList", "")
        shown = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60)
        return shown.stdout.split()

    def finish(self, timeout: float = 600) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            state = self.job_state()
            pytest.fail(f"the Slurm job did not finish within {timeout:.0f} s (state {state}):\n{self.output()}")

    def cancel(self) -> None:
        """Clean up after a failure: our job only, then the launcher."""
        if self.process.poll() is None:
            if self.job_id:
                subprocess.run(["scancel", self.job_id], timeout=60)
            self.process.terminate()
            self.process.wait(timeout=60)

    def task_logs(self, kind: str) -> str:
        folder = self.sweep_dirs()[0] / ".submitit" / self.job_id
        return "".join(p.read_text(errors="replace") for p in sorted(folder.glob(f"*_log.{kind}")))

    def task_log(self, task: int, kind: str) -> str:
        path = self.sweep_dirs()[0] / ".submitit" / self.job_id / f"{self.job_id}_{task}_log.{kind}"
        return path.read_text(errors="replace") if path.exists() else ""

    def requeue_mid_run(self) -> None:
        """What a preemption with PreemptMode=REQUEUE does: Slurm sends SIGTERM to every task (SIGKILL after
        KillWait) and queues the same batch script again, which unpickles the same Hydra job."""
        self.wait_for(lambda: len(train_records(self.run_dir)) >= PREEMPT_AFTER if self.sweep_dirs() else False,
                      f"{PREEMPT_AFTER} train records in metrics.jsonl")  # fmt: skip
        assert len(train_records(self.run_dir)) < UPDATES, "the run ended before it could be interrupted"
        subprocess.run(["scontrol", "requeue", self.job_id], check=True, timeout=60)
        self.wait_for(lambda: int(self.job_info().get("Restarts", 0)) >= 1 and self.job_state() != "COMPLETING",
                      "requeued job", timeout=120)  # fmt: skip
        if self.job_state() == "PENDING":  # Slurm holds a requeued job for about two minutes (Reason=BeginTime)
            subprocess.run(["scontrol", "update", f"JobId={self.job_id}", "StartTime=now"], check=True, timeout=60)


@pytest.fixture
def sweep(cache_dir, tmp_path):
    """Starts the sweep when called; cancels its job if the test stops before the job ended."""
    started: List[SlurmSweep] = []

    def start(*launcher: str) -> SlurmSweep:
        started.append(SlurmSweep(cache_dir, tmp_path, launcher))
        return started[-1]

    yield start
    for one in started:
        one.cancel()


def test_two_slurm_tasks_match_one_process_at_double_batch(sweep, reference):
    job = sweep()
    job.wait_for_job()
    assert job.finish() == 0, job.output()
    assert "distributed: 2 processes" in job.task_logs("out")
    assert_same_losses(reference, train_records(job.run_dir))


def test_requeued_job_resumes_and_matches_an_uninterrupted_run(sweep, reference):
    job = sweep()
    job.wait_for_job()
    job.requeue_mid_run()
    assert job.finish() == 0, job.output()

    assert len(job.sweep_dirs()) == 1, f"the requeued job ran in another folder: {job.sweep_dirs()}"
    assert "DUE TO JOB REQUEUE" in job.task_logs("err")
    train_log = (job.run_dir / "train.log").read_text()
    assert "interrupted at update" in train_log, train_log
    assert "resumed at update" in train_log, train_log
    assert_same_losses(reference, train_records(job.run_dir))


def usable_nodes() -> List[str]:
    """Nodes up (idle, or still finishing an earlier test's job: it waits for them), not down or drained."""
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, timeout=30)
    return sorted({line.split()[0] for line in nodes.stdout.splitlines()
                   if re.match(r"\S+ (idle|mix|alloc|comp)", line)})  # fmt: skip


def test_requeued_two_node_job_resumes_on_both_nodes_and_matches_an_uninterrupted_run(sweep, reference):
    if len(usable_nodes()) < 2:
        pytest.skip(f"needs two Slurm nodes, there are {usable_nodes()}; on one machine: "
                    "sudo SLURM_LOCAL_NODES=2 scripts/slurm_local.sh")  # fmt: skip
    job = sweep("hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1", "hydra.launcher.mem_gb=1")
    job.wait_for_job()
    job.wait_for(lambda: bool(job.job_nodes()), "the job's nodes", timeout=120)
    assert len(set(job.job_nodes())) == 2, f"the job did not get two nodes: {job.job_nodes()}"
    job.requeue_mid_run()
    assert job.finish() == 0, job.output()

    assert len(job.sweep_dirs()) == 1, f"the requeued job ran in another folder: {job.sweep_dirs()}"
    assert len(set(job.job_nodes())) == 2, f"the requeued job did not get two nodes: {job.job_nodes()}"
    # Each task started twice (before and after the requeue), task 0 on the job's node 0 and task 1 on node 1,
    # and both times the two tasks formed one 2-process group.
    for task in (0, 1):
        starts = re.findall(r"Starting with JobEnvironment\(.*node=(\d+)\(2\), global_rank=(\d+)\(2\)\)",
                            job.task_log(task, "out"))  # fmt: skip
        assert starts == [(str(task), str(task))] * 2, f"task {task} started as {starts}, not twice on node {task}"
        assert "SIGTERM: interrupted at update" in job.task_log(task, "err"), f"task {task} was not interrupted"
    assert job.task_log(0, "out").count("distributed: 2 processes") == 2
    # srun's own lines go to task 0's error log: the requeue, and which node each task of the first run left.
    srun_log = job.task_log(0, "err")
    assert "DUE TO JOB REQUEUE" in srun_log, srun_log
    exits = dict(re.findall(r"srun: error: (\S+): task (\d+): Exited with exit code 75", srun_log))
    assert len(exits) == 2 and sorted(exits.values()) == ["0", "1"], f"the tasks did not run on two nodes: {srun_log}"
    train_log = (job.run_dir / "train.log").read_text()
    assert "interrupted at update" in train_log and "resumed at update" in train_log, train_log
    assert_same_losses(reference, train_records(job.run_dir))
