"""Runs on several machines: a process group that survives torchrun restarts, the shared run folder check, and
one-line messages when another process stops answering or goes away.

torchrun's c10d rendezvous keeps one TCPStore (its agent's) for the whole job and hands it to every worker group it
starts (TORCHELASTIC_USE_AGENT_STORE=True). init_process_group reuses fixed keys in it, so after a restart the new
workers could read the addresses that the dead workers published and fail at once ("Connection refused").
Each worker group therefore agrees on a number no earlier group used and keeps its keys under it.
"""
import contextlib
import os
import re
import secrets
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import torch.distributed as dist

from linformer_pt.data.cache import sha256_file
from linformer_pt.errors import UserError
from linformer_pt.training.distributed import all_gather_objects

EXIT_PEER_LOST = 1  # a failure, not a request: torchrun --max-restarts restarts the group on it
PREFIX = "linformer_pt/group"
FOLDER_TOKEN = ".shared_folder_check"
# A name created on another NFS client may stay invisible until the directory's cached attributes expire
# (acdirmax, 60 s by default): a rank looks for rank 0's file that long before calling the folder unshared.
SHARED_FOLDER_WAIT_S = 60.0
POLL_S = 0.05


def restart_count() -> int:
    """How many times torchrun restarted this worker group (0 for the first one, or without torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def resume_line(resume_from: Optional[Path]) -> Optional[str]:
    """The line a (re)started run begins with: where it resumes from, and after which restart of torchrun."""
    restarts = restart_count()
    if restarts == 0:
        return None if resume_from is None else f"resuming from {resume_from}"
    if resume_from is None:
        return f"elastic restart {restarts}: no checkpoint written yet; training from the start"
    return f"elastic restart {restarts}: resuming from {resume_from}"


# ---- joining the process group --------------------------------------------------------------------------
def shares_agent_store() -> bool:
    """Whether MASTER_ADDR:MASTER_PORT is torchrun's long-lived store (kept across restarts) rather than one that
    rank 0 creates afresh for each worker group."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def init_process_group(backend: str, rank: int, world_size: int, timeout: timedelta) -> None:
    """init_process_group from the environment, with keys no earlier worker group of this job wrote."""
    if not shares_agent_store():
        dist.init_process_group(backend, timeout=timeout)
        return
    from torch.distributed.rendezvous import rendezvous

    store, _, _ = next(rendezvous("env://", rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    group = agree_on_group_number(store, rank, world_size, timeout)
    # What init_process_group's env:// path would do (a "default_pg" namespace), one level further down.
    fresh = dist.PrefixStore(f"{PREFIX}/{group}/default_pg", store)
    dist.init_process_group(backend, store=fresh, rank=rank, world_size=world_size, timeout=timeout)


def agree_on_group_number(store: dist.Store, rank: int, world_size: int, timeout: timedelta) -> int:
    """A number all processes of this worker group share and no earlier group of the job used.

    TORCHELASTIC_RESTART_COUNT is no such number: each node's agent counts its own restarts (a node that restarted
    for a membership change does not count it). Rank 0 takes the next value of a counter in the store; the others
    learn it under a key only they know (a random nonce), so none of them can read a value a dead group left.
    """
    if rank != 0:
        nonce = secrets.token_hex(8)
        store.set(f"{PREFIX}/ask/{rank}", nonce)
        store.wait([f"{PREFIX}/answer/{nonce}"], timeout)
        group = int(store.get(f"{PREFIX}/answer/{nonce}"))
        store.set(f"{PREFIX}/{group}/joined/{rank}", "1")
        return group
    group = store.add(f"{PREFIX}/count", 1)
    answered: Dict[int, bytes] = {}
    waiting: Set[int] = set(range(1, world_size))
    deadline = time.monotonic() + timeout.total_seconds()
    while waiting:
        for other in sorted(waiting):
            # An ask may be a dead group's: answering it too is harmless, and a fresh one replaces it.
            ask = f"{PREFIX}/ask/{other}"
            if store.check([ask]) and answered.get(other) != (nonce := store.get(ask)):
                store.set(f"{PREFIX}/answer/{nonce.decode()}", str(group))
                answered[other] = nonce
            if store.check([f"{PREFIX}/{group}/joined/{other}"]):
                waiting.discard(other)
        if waiting and time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for ranks {sorted(waiting)} to join the process group")
        time.sleep(POLL_S if waiting else 0)
    return group


# ---- the run folder must be one folder for all ranks --------------------------------------------------------
def check_shared_folder(output_dir: Path, rank: int, world_size: int, timeout: timedelta) -> None:
    """UserError on every rank when some rank cannot see a file rank 0 just wrote into the run folder.

    Ranks on machines that do not share hydra.run.dir would each resume from what their own disk holds (a
    split-brain run); the check costs a file and two small collectives at the start.
    """
    if world_size <= 1:
        return
    token = all_gather_objects(secrets.token_hex(8))[0]  # rank 0's
    path = Path(output_dir) / FOLDER_TOKEN
    if rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(token)
    dist.barrier()
    wait_s = min(SHARED_FOLDER_WAIT_S, timeout.total_seconds() / 2)  # before the collective below times out
    seen = rank == 0 or sees_token(path, token, wait_s)
    views = all_gather_objects((seen, str(Path(output_dir).absolute()), socket.gethostname()))
    if rank == 0:
        path.unlink(missing_ok=True)
    blind = [r for r, (ok, _, _) in enumerate(views) if not ok]
    if blind:
        _, folder, host = views[blind[0]]
        raise UserError(
            f"rank {blind[0]} (host {host}) cannot see the files rank 0 writes into the run folder ({views[0][1]} on "
            f"rank 0, {folder} on rank {blind[0]}): hydra.run.dir must be on a filesystem shared by all nodes"
        )


def check_one_tokenizer(tokenizer: Optional[Path], rank: int, world_size: int) -> None:
    """UserError on every rank when the ranks built different tokenizers (data caches local to each machine that
    came out differently): token ids would mean different words on different ranks."""
    if world_size <= 1 or tokenizer is None:
        return
    hashes = all_gather_objects((sha256_file(tokenizer), socket.gethostname()))
    other = next((r for r, (sha, _) in enumerate(hashes) if sha != hashes[0][0]), None)
    if other is not None:
        raise UserError(
            f"rank {other} (host {hashes[other][1]}) has another tokenizer than rank 0 (sha256 "
            f"{hashes[other][0][:12]}, rank 0's: {hashes[0][0][:12]}): share dataset.cache_dir between the nodes, "
            "or give tokenizer.path"
        )


def sees_token(path: Path, token: str, wait_s: float) -> bool:
    """Whether `path` holds `token` within `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if path.read_text() == token:
                return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


# ---- another process stopped answering ----------------------------------------------------------------------
class PeerLost(Exception):
    """Another process of the group timed out or went away; the message is the one line to show."""


# What a rank was doing, by the innermost of these functions in the traceback of the failed collective.
PHASES = {
    "train_step": "training update {next}",
    "validate": "validating after update {done}",
    "validate_set": "validating after update {done}",
    "state_dict": "gathering the checkpoint of update {done}",
    "agree": "agreeing on stop and save after update {done}",
    "check_shared_folder": "checking the run folder",
    "init_process_group": "joining the process group",
    "barrier": "waiting for the other processes",
}
TIMEOUT_WORDS = ("timed out", "timeout")
LOST_WORDS = ("connection closed", "connection reset", "broken pipe", "connection refused", "peer")


def peer_failure(err: BaseException, rank: int, timeout: timedelta, update: Optional[int],
                 checkpoint: Optional[Path]) -> Optional[str]:  # fmt: skip
    """One line for an error a collective raised because another process hung or went away; None for others."""
    if not isinstance(err, (RuntimeError, TimeoutError)) or not is_distributed(err):
        return None
    lowered = str(err).lower()
    doing = phase(err, update)
    last = f"the last checkpoint is {checkpoint}" if checkpoint is not None else "no checkpoint was written yet"
    if any(word in lowered for word in LOST_WORDS):  # before the timeout words: "timed out connecting: refused"
        return f"rank {rank}: lost contact with another process while {doing} ({reason(err)}); {last}"
    if any(word in lowered for word in TIMEOUT_WORDS):
        return (f"rank {rank}: a collective timed out after {timeout.total_seconds():g} s waiting for another process "
                f"while {doing} (it stopped, hung or lost its machine; trainer.distributed_timeout_minutes sets the "
                f"wait); {last}")  # fmt: skip
    return None


def reason(err: BaseException) -> str:
    """The gist of a gloo/NCCL message: its first sentence, without source locations such as [.../pair.cc:537]."""
    text = re.sub(r"\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", str(err).strip())
    first = text.splitlines()[0] if text else type(err).__name__
    return first.split(". ")[0][:200]


def is_distributed(err: BaseException) -> bool:
    """Raised by torch.distributed (a collective, the store, the process group), or in one of our PHASES (where
    DDP's gradient all-reduce fails inside backward(), with no torch.distributed frame), not by other code."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    package = str(Path(__file__).resolve().parents[1])
    for frame in frames(err):
        where, name = frame.f_code.co_filename, frame.f_code.co_name
        if f"torch{os.sep}distributed{os.sep}" in where or (name in PHASES and where.startswith(package)):
            return True
    return False


def phase(err: BaseException, update: Optional[int]) -> str:
    """What the rank was doing when `err` was raised, from its traceback."""
    names = [frame.f_code.co_name for frame in frames(err)]
    for name in reversed(names):
        if name in PHASES:
            done = update if update is not None else 0
            return PHASES[name].format(done=done, next=done + 1)
    return "setting up" if update is None else f"at update {update}"


def frames(err: BaseException) -> List:
    tb, out = err.__traceback__, []
    while tb is not None:
        out.append(tb.tb_frame)
        tb = tb.tb_next
    return out


@contextlib.contextmanager
def peer_failures_in_one_line(prog: str) -> Iterator[None]:
    """PeerLost: its line on stderr and exit status EXIT_PEER_LOST (no traceback: the cause is elsewhere)."""
    try:
        yield
    except PeerLost as err:
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(EXIT_PEER_LOST)
