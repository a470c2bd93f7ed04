"""The GPU check's runs of the real loop (tools/gpu_check.py): host waits, resume, compile, `speed: fast`
pretraining, torchrun and throughput. Each takes the check's `Checks` and reports through it."""
import contextlib
import io
import itertools
import math
import os
import re
import subprocess
import sys
import time

import torch

from processor import configure
from processor.device import cuda_fast_path
from tools.benchmark import write_dataset
from tools.benchmark_timing import PeakMemory, synchronize, timed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Seconds each subprocess may take; with the in-process checks they fit the budget (gpu_check.BUDGET_SECONDS).
TIMEOUTS = {"fast_pretrain": 150, "torchrun[nccl]": 75, "torchrun[nccl+sync_bn]": 75, "torchrun[gloo]": 75}


def step(proc, batch):
    """One full training step of `proc` on `batch`; its loss, on the device (reading it would wait)."""
    inputs = proc.prepare(batch)
    with proc.autocast():
        losses = proc.train_step(inputs)
    proc.optimize(losses["loss"])
    return losses["loss"].detach()


def main_py(c, tag, work, *args, launcher=(), env=None):
    """`python [launcher] main.py pretrain_skeletonclr_multi_swapv2` (SkeleMixCLR+) on the check's data in
    `work` with `args`, under `tag`'s timeout, never past the check's budget: (return code, or None when it
    timed out; stderr; seconds)."""
    command = [*launcher, "main.py", "pretrain_skeletonclr_multi_swapv2", "--work_dir", work, "--batch_size", "16",
               "--progress", "false", "--model_args.hidden_channels", "4", "--model_args.hidden_dim", "16",
               "--model_args.queue_size", "64", "--train_feeder_args.frames", str(c.frames),
               *[f"--{p}_feeder_args.{k}={v}" for p in ("train", "test") for k, v in c.data.items()], *args]
    limit = max(1, min(TIMEOUTS[tag], c.seconds_left()))
    t0 = time.perf_counter()
    try:
        run = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=limit,
                             env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))
        return run.returncode, run.stderr, round(time.perf_counter() - t0, 1)
    except subprocess.TimeoutExpired as e:
        return None, f"timed out after {limit} s\n{e.stderr or ''}", round(time.perf_counter() - t0, 1)


def last_line(text):
    return (text.strip().splitlines() or [""])[-1][:200]


def no_host_waits(c):
    """Three real pretraining steps after a warm-up one under torch.cuda.set_sync_debug_mode("error"): any
    host wait (a .item(), a blocking copy) raises."""
    cases = {"fp32": {}, "bf16+device_augment+bone": dict(amp="bf16", device_augment=True, stream="bone"),
             "gaussian mix": dict(model_args=dict(mix_mode="gaussian"))}
    for name, extra in cases.items():
        proc = c.processor("sync", **extra)
        proc.set_train_mode()
        proc.train_loader.sampler.set_epoch(0)
        batches = list(itertools.islice(iter(proc.train_loader), 4))
        step(proc, batches[0])  # per-device caches, cuDNN's algorithm search
        if not c.cuda:
            for batch in batches[1:]:
                step(proc, batch)
            c.report(f"no_host_waits[{name}]", "SKIP", why="the steps ran; sync detection needs CUDA")
            continue
        synchronize(c.device)
        error = None
        torch.cuda.set_sync_debug_mode("error")
        try:
            for batch in batches[1:]:
                step(proc, batch)
            synchronize(c.device)
        except RuntimeError as e:
            error = str(e).splitlines()[0][:160]
        finally:
            torch.cuda.set_sync_debug_mode(0)
        c.report(f"no_host_waits[{name}]", "FAIL" if error else "PASS", error=error)


def resume(c):
    """2 epochs with deterministic: true against epoch 2 resumed from the epoch-1 checkpoint: bit for bit."""
    common = dict(num_epoch=2, save_interval=1, deterministic=True, amp="bf16" if c.cuda else "off")
    straight = c.processor("straight", **common)
    with contextlib.redirect_stdout(io.StringIO()):
        straight.start()
    resumed = c.processor("resumed", resume=os.path.join(c.tmp, "straight", "epoch1_model.pt"), **common)
    with contextlib.redirect_stdout(io.StringIO()):
        resumed.start()
    moved = [k for k, p in straight.raw_model.state_dict().items()
             if not torch.equal(p, resumed.raw_model.state_dict()[k])]
    loss = [straight.stats[1]["train/loss"], resumed.stats[0]["train/loss"]]
    c.report("resume_bit_exact[deterministic]", "PASS" if not moved and loss[0] == loss[1] else "FAIL",
             tensors_differing=len(moved), epoch2_loss=loss)


def compile_check(c):
    """compile: true with bf16 (on CPU dynamo with the aot_eager backend: the graphs without inductor's kernels):
    the first step's seconds (compiling), graphs after 1, 3 steps and a kNN pass and 2 more steps (no new
    graph after the first step), graph breaks, loss against eager."""
    from torch._dynamo.utils import counters
    backend = "inductor" if c.cuda else "aot_eager"
    losses = {}
    for mode in ("eager", "compile"):
        torch.compiler.reset()
        counters.clear()
        torch.manual_seed(0)
        # eval_interval 1: the processor has a validation loader for the kNN pass
        proc = c.processor(f"compile_{mode}", amp="bf16", compile=mode == "compile" and c.cuda, knn_k=[1],
                           eval_interval=1, model_args=dict(dropout=0.0))
        if mode == "compile" and not c.cuda:
            for module in proc.compile_targets():
                module.compile(backend=backend)
        proc.set_train_mode()
        proc.train_loader.sampler.set_epoch(0)
        batches = list(itertools.islice(iter(proc.train_loader), 3))
        t0 = time.perf_counter()
        losses[mode] = float(step(proc, batches[0]))
        synchronize(c.device)
        first_s = time.perf_counter() - t0
    graphs = [counters["stats"]["unique_graphs"]]
    for batch in batches[1:]:
        step(proc, batch)
    graphs.append(counters["stats"]["unique_graphs"])
    knn = proc.knn(proc.raw_model.encoder_q, pooled=False)
    for batch in batches[1:]:
        step(proc, batch)
    graphs.append(counters["stats"]["unique_graphs"])
    breaks = sum(counters["graph_break"].values())
    rel = abs(losses["compile"] - losses["eager"]) / abs(losses["eager"])
    ok = graphs[0] > 0 and graphs[1] == graphs[0] and not breaks and rel < 2e-2 and math.isfinite(knn["top1_k1"])
    c.report(f"compile[{backend}, bf16]", "PASS" if ok else "FAIL", first_step_s=round(first_s, 1),
             graphs=graphs, graph_breaks=breaks, loss_rel=f"{rel:.1e}", knn_top1=round(knn["top1_k1"], 1))


def fast_pretrain(c):
    """`python main.py pretrain ... --speed fast` for 8 steps (whole epochs), as a user starts it: the amp and
    compile it chose for this device (on CUDA: what the card runs fast), no graph break, the recompiles
    (dynamo's logs) and a finite final loss."""
    work = os.path.join(c.tmp, "fast")
    rc, err, seconds = main_py(c, "fast_pretrain", work, "--speed", "fast", "--num_steps", "8", "--eval_interval",
                               "0", "--device", str(c.device), env=dict(TORCH_LOGS="graph_breaks,recompiles"))
    cfg = {}
    if os.path.exists(os.path.join(work, "config.yaml")):
        from torchlight.config import load_yaml
        cfg = load_yaml(os.path.join(work, "config.yaml"))
    log = open(os.path.join(work, "log.txt")).read() if os.path.exists(os.path.join(work, "log.txt")) else ""
    loss = [float(v) for v in re.findall(r"train/loss (\S+)", log)]
    breaks, recompiles = err.count("Graph break in user code"), err.count("Recompiling function")
    expected = cuda_fast_path(c.device) if c.cuda else (cfg.get("amp"), False)
    ok = (rc == 0 and loss and math.isfinite(loss[-1]) and (cfg.get("amp"), cfg.get("compile")) == expected
          and not breaks)
    c.report("fast_pretrain", "PASS" if ok else "FAIL", amp=cfg.get("amp"), compile=cfg.get("compile"),
             loss=loss[-1] if loss else None, graph_breaks=breaks, recompiles=recompiles, seconds=seconds,
             error=None if ok else last_line(err))


def torchrun(c):
    """main.py pretraining under torchrun for 2 epochs: NCCL with and without sync_bn (Gloo on CPU)."""
    ranks = max(1, min(2, torch.cuda.device_count())) if c.cuda else 2
    cases = {"nccl": [], "nccl+sync_bn": ["--sync_bn", "true"]} if c.cuda else {"gloo": ["--device", "cpu"]}
    if not c.cuda:
        c.report("torchrun[nccl+sync_bn]", "SKIP", why="SyncBatchNorm and NCCL need CUDA")
    for tag, extra in cases.items():
        work = os.path.join(c.tmp, tag)
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
        rc, err, seconds = main_py(c, f"torchrun[{tag}]", work, "--num_epoch", "2", "--eval_interval", "1",
                                   "--knn_k", "[1]", "--num_workers", "0", *extra, launcher=launcher)
        log = open(os.path.join(work, "log.txt")).read() if os.path.exists(os.path.join(work, "log.txt")) else ""
        ok = rc == 0 and f"{ranks} process(es)" in log and os.path.exists(os.path.join(work, "epoch2_model.pt"))
        c.report(f"torchrun[{tag}]", "PASS" if ok else "FAIL", ranks=ranks, rc=rc, seconds=seconds,
                 error=None if ok else last_line(err))


def throughput(c):
    """Pretraining steps/s and peak memory of SkeleMixCLR+ at full width (hidden 16, 256-d, batch 128,
    64 frames, bf16), fused query pass against separate passes."""
    if not c.cuda:
        return c.report("fused_throughput", "SKIP", why="full width on a GPU only")
    data = write_dataset(c.tmp, 128 * 6, 64)
    row = {}
    for name, fused in (("fused", True), ("separate", False)):
        cls, cfg = configure("pretrain_skeletonclr_multi_swapv2", dict(
            work_dir=os.path.join(c.tmp, f"speed_{name}"), overwrite=True, batch_size=128, num_workers=4,
            progress=False, eval_interval=0, save_interval=10 ** 9, device=str(c.device), amp="bf16",
            device_augment=True, train_feeder_args=dict(data, frames=64),
            model_args=dict(queue_size=16384, fused_queries=fused)))
        with contextlib.redirect_stdout(io.StringIO()):
            proc = cls(cfg)
        proc.set_train_mode()
        batches = iter(proc.train_loader)
        with PeakMemory(c.device) as memory:
            times = timed(lambda p=proc, b=batches: step(p, next(b)), 1, 4, c.device)
        row[name] = dict(samples_per_s=round(128 / sorted(times)[len(times) // 2], 1), peak_mb=round(memory.mb))
        del proc
        torch.cuda.empty_cache()
    speedup = row["fused"]["samples_per_s"] / row["separate"]["samples_per_s"]
    c.report("fused_throughput[full width, bf16]", "PASS" if speedup >= 1 else "FAIL",
             speedup=round(speedup, 2), **row)
