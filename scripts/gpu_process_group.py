"""Run by scripts/gpu_check.py under torchrun: join the process group with a backend (NCCL on GPUs), all-reduce,
and train a small model a few steps wrapped in DDP and in FSDP2; the result goes to a JSON file.
Run: torchrun --standalone --nproc_per_node=1 scripts/gpu_process_group.py RESULT.json nccl
"""
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Dict


def process_group_child(result_file: Path, backend: str) -> None:
    """Under torchrun: init `backend`, all-reduce, and train a small model 3 steps under DDP and under FSDP2."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from linformer_pt.models.linformer_roberta import LinformerRoberta, LinformerRobertaConfig

    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    from torch.distributed.device_mesh import init_device_mesh

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    result: Dict[str, Any] = {"backend": backend, "world_size": int(os.environ["WORLD_SIZE"])}
    try:
        dist.init_process_group(backend)
        total = torch.ones(1, device=device)
        dist.all_reduce(total)
        result["all_reduce"] = float(total)
        cfg = LinformerRobertaConfig(layers=2, embed_dim=64, ffn_embed_dim=128, heads=4, max_positions=64, k=16)
        for wrapper in ("ddp", "fsdp"):
            torch.manual_seed(0)
            model = LinformerRoberta(cfg, vocab_size=300, padding_idx=1).to(device)
            if wrapper == "ddp":
                wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            else:
                wrapped = fully_shard(model, mesh=init_device_mesh(device.type, (dist.get_world_size(),)))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            losses = []
            for _ in range(3):
                tokens = torch.randint(4, 300, (4, 64), device=device)
                loss = wrapped(tokens).float().logsumexp(-1).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss))
            result[wrapper] = {"losses": losses, "finite": all(math.isfinite(x) for x in losses)}
        ok = result["all_reduce"] == result["world_size"] and result["ddp"]["finite"] and result["fsdp"]["finite"]
        result["status"] = "ok" if ok else "failed"
    except Exception as err:
        result.update(status="error", error=f"{type(err).__name__}: {err}"[:500])
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        result_file.write_text(json.dumps(result))


if __name__ == "__main__":
    process_group_child(Path(sys.argv[1]), sys.argv[2])
