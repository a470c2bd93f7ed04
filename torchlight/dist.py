"""torch.distributed helpers (torchrun conventions); every one is a no-op in a single process."""
import os
import sys

import torch
import torch.distributed as dist

from .config import ConfigError


def is_dist():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_dist() else 0


def get_world_size():
    return dist.get_world_size() if is_dist() else 1


def local_rank():
    return int(os.environ.get("LOCAL_RANK", 0))


def local_cuda_index():
    """This rank's GPU: LOCAL_RANK when it is a visible device's ordinal, else device 0 when the process sees
    one GPU (SLURM-style launches give each process its own through CUDA_VISIBLE_DEVICES). torchrun's ranks
    all see the node's GPUs: more of them on this node (LOCAL_WORLD_SIZE) than visible GPUs is an error on
    every rank, before NCCL fails on two ranks sharing a GPU."""
    rank, count = local_rank(), torch.cuda.device_count()
    if count == 0:  # no GPU visible: nothing to check against, the device fails where used
        return rank
    node_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 0))  # set by torchrun
    if node_ranks > count:
        raise ConfigError(f"{node_ranks} ranks on this node (torchrun --nproc_per_node {node_ranks}) but it has "
                          f"{count} visible GPU(s): start at most {count}, one per GPU")
    if rank < count:
        return rank
    if count == 1:
        return 0
    raise ConfigError(f"LOCAL_RANK {rank} but this process sees {count} GPUs (CUDA_VISIBLE_DEVICES): "
                      "start at most one process per visible GPU, or one GPU per process")


def is_main_process():
    return get_rank() == 0


def barrier():
    """Wait here until every rank arrives: the others then read what rank 0 wrote before it; no-op in one process."""
    if is_dist():
        dist.barrier()


def init_distributed(device="auto"):
    """Join the process group when started by torchrun (NCCL on GPUs, Gloo on CPU); True if distributed.

    `device` is the configured device: 'cpu' selects Gloo even on a machine with GPUs.
    """
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) < 1 or is_dist():
        return is_dist()
    on_cpu = device is not None and str(device).startswith("cpu")
    backend = "nccl" if torch.cuda.is_available() and not on_cpu else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_cuda_index())
    dist.init_process_group(backend=backend)
    return True


def leave_process_group(failed=False):
    """Leave the process group at the end of a run: destroyed after success, aborted after a failure.

    A rank that fails alone must exit at once with its error: NCCL ranks waiting for it in a collective
    notice nothing until the NCCL timeout, but torchrun stops them as soon as one rank's process exits
    non-zero. Aborting (not destroying) keeps this rank from waiting on its peers' unfinished work.
    """
    if not is_dist():
        return
    if not failed:
        dist.destroy_process_group()
        return
    print(f"rank {get_rank()} failed: aborting its process group (torchrun stops the other ranks)",
          file=sys.stderr, flush=True)
    try:
        dist.distributed_c10d._abort_process_group()
    except (AttributeError, RuntimeError):  # a backend or torch without abort: the exit closes its connections
        pass


@torch.no_grad()
def concat_all_gather(x):
    """All ranks' `x` concatenated along dim 0 in rank order (no gradient); `x` itself in one process."""
    if get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def all_reduce_sum(x):
    """Sum of a tensor over ranks (in place); the tensor itself in one process."""
    if get_world_size() > 1:
        dist.all_reduce(x)
    return x


def broadcast_object(obj, src=0):
    """Rank `src`'s picklable `obj` on every rank (what the others pass is ignored); `obj` in one process."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj):
    """A list of every rank's picklable `obj` in rank order; [obj] in one process."""
    if get_world_size() == 1:
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
