"""Two-process DDP (gloo) with find_unused_parameters=False: every parameter, shared ones included, gets a gradient."""
import itertools
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from conftest import leave_without_teardown

from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig

KINDS = list(itertools.product(["none", "headwise", "kv", "layerwise"], ["linear", "conv"]))


def train_two_steps(rank: int, init_file: str, errors) -> None:
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
        torch.set_num_threads(1)
        for sharing, projection in KINDS:
            torch.manual_seed(0)  # same initial weights on both ranks
            cfg = LinformerRobertaConfig(
                layers=2, embed_dim=32, ffn_embed_dim=64, heads=4, max_positions=24, k=6,
                sharing=sharing, projection=projection,
            )  # fmt: skip
            model = DistributedDataParallel(LinformerRoberta(cfg, vocab_size=50, padding_idx=1))
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            torch.manual_seed(rank + 1)  # different data per rank
            for _ in range(2):  # unused parameters are only detected on the second step
                tokens = torch.randint(5, 50, (3, 24))
                model(tokens).float().logsumexp(-1).mean().backward()
                opt.step()
                opt.zero_grad()
            flat = torch.cat([p.detach().flatten() for p in model.parameters()])
            gathered = [torch.empty_like(flat) for _ in range(2)]
            dist.all_gather(gathered, flat)
            assert torch.equal(gathered[0], gathered[1]), f"{sharing}/{projection}: ranks diverged"
        dist.destroy_process_group()
    except Exception:  # report to the parent: a child's traceback is otherwise lost
        errors.put(f"rank {rank}: {traceback.format_exc()}")
        raise
    leave_without_teardown()


def test_ddp_step_for_every_sharing_scheme(tmp_path):
    ctx = mp.get_context("spawn")
    errors = ctx.SimpleQueue()
    mp.start_processes(train_two_steps, args=(str(tmp_path / "init"), errors), nprocs=2, join=True, start_method="spawn")
    assert errors.empty(), errors.get()
