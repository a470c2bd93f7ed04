"""GPU check: the CUDA paths a CPU cannot exercise, each reported PASS / FAIL / SKIP with its numbers.

python tools/gpu_check.py --json gpu_check.json          # one GPU, under 10 minutes (docs/gpu.md)
python tools/gpu_check.py --device cpu --quick           # dry run on CPU (< 1 min): CUDA-only checks SKIP

Checks: grouped BatchNorm equal to separate calls; the fused query pass equal to separate passes in fp64,
fp32, bf16 and fp16; no host wait in real pretraining steps (torch.cuda.set_sync_debug_mode("error"));
a bit-exact resume with deterministic: true; compile time and graph count; torchrun (NCCL, with and
without sync_bn; Gloo on CPU); fused against separate passes' throughput and peak memory at full width.
Exits non-zero when a check fails.
"""
import argparse
import contextlib
import copy
import io
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: deterministic: true needs it
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

if __package__ in (None, ""):  # run as a script: the repository root on sys.path
    import _bootstrap  # noqa: F401
from net.methods import pretraining_model  # noqa: E402
from net.st_gcn_fast import grouped_batch_norm  # noqa: E402
from processor import configure  # noqa: E402
from tools.benchmark import write_dataset  # noqa: E402
from tools.benchmark_timing import PeakMemory, synchronize, timed  # noqa: E402
from torchlight.util import set_numerics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMES = 16
AMPS = {"fp64": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# (loss relative error, least gradient cosine) of fused against separate passes: two roundings of one function
TOLERANCES = {"fp64": (1e-9, 1 - 1e-9), "fp32": (1e-4, 0.9999), "bf16": (3e-2, 0.9), "fp16": (5e-3, 0.98)}


class Checks:
    def __init__(self, args, tmp):
        self.args, self.tmp, self.results = args, tmp, []
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.data = write_dataset(tmp, 64 if args.quick else 256, FRAMES)

    def report(self, check, status, **numbers):
        self.results.append(dict(check=check, status=status, **numbers))
        print(f"[{status}] {check}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()), flush=True)

    def processor(self, work, name="pretrain_skeletonclr_multi_swapv2", **extra):
        """A small pretraining processor on the check's data (tiny with --quick)."""
        size = dict(hidden_channels=4, hidden_dim=16, queue_size=64) if self.args.quick else \
            dict(hidden_channels=8, hidden_dim=32, queue_size=256)
        cfg = dict(work_dir=os.path.join(self.tmp, work), overwrite=True, batch_size=16 if self.args.quick else 32,
                   num_workers=0, progress=False, eval_interval=0, save_interval=10 ** 9, device=str(self.device),
                   train_feeder_args=dict(self.data, frames=FRAMES), test_feeder_args=self.data)
        cfg.update(extra, model_args=dict(size, **extra.get("model_args", {})))
        cls, cfg = configure(name, cfg)
        with contextlib.redirect_stdout(io.StringIO()):
            return cls(cfg)

    def grouped_bn(self):
        """grouped_batch_norm over 3 groups against 3 separate BatchNorm calls: outputs and running statistics."""
        bn = nn.BatchNorm2d(8).to(self.device).train()
        ref = copy.deepcopy(bn)
        gen = torch.Generator().manual_seed(0)
        parts = [(torch.randn(16, 8, 32, 25, generator=gen) * (g + 1) + g).to(self.device) for g in range(3)]
        expected = torch.cat([ref(x) for x in parts], 1)
        out = grouped_batch_norm(bn, torch.cat(parts, 1), 3)
        err = (out - expected).abs().max().item()
        stats = max((a - b).abs().max().item() for a, b in zip(bn.buffers(), ref.buffers()))
        self.report(f"grouped_bn[{self.device.type}]", "PASS" if err < 1e-4 and stats < 1e-5 else "FAIL",
                    max_abs_err=f"{err:.1e}", stats_err=f"{stats:.1e}")

    def fused_vs_separate(self):
        """A SkeleMixCLR+ MoCo step with the fused query pass against separate passes: loss and gradients,
        and that the fused model made one query-encoder call per step (four separate)."""
        set_numerics(tf32=False)
        for amp, dtype in AMPS.items():
            torch.manual_seed(0)
            encoder = dict(hidden_channels=4 if self.args.quick else 8, hidden_dim=16 if self.args.quick else 32,
                           dropout=0.0)
            fused = pretraining_model(encoder, feature_dim=16, queue_size=64, head="mlp_bn", temperature=0.2,
                                      swap_params=[[2, 3, 1, 2, 3, 1.0]], fused_queries=True).to(self.device)
            fused = fused.double() if amp == "fp64" else fused
            separate = copy.deepcopy(fused)
            separate.fused_queries = False
            x = torch.randn(16, 3, FRAMES, 25, 2, generator=torch.Generator().manual_seed(1))
            views = [x.to(self.device, torch.float64 if amp == "fp64" else torch.float32)] * 2
            out = {}
            for name, model in (("fused", fused), ("separate", separate)):
                calls = []  # the query encoder's entry points, wrapped on this instance to count its calls
                encoder = model.encoder_q.encoder
                for entry in ("forward", "forward_stacked"):
                    method = getattr(encoder, entry)
                    setattr(encoder, entry, lambda *a, m=method, c=calls, **k: c.append(1) or m(*a, **k))
                with torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                    loss = model(views, generator=torch.Generator().manual_seed(3))["loss"]
                loss.backward()
                grads = torch.cat([p.grad.double().flatten() for p in model.encoder_q.parameters()
                                   if p.grad is not None])
                out[name] = loss.item(), grads, len(calls)
            (lf, gf, cf), (ls, gs, cs) = out["fused"], out["separate"]
            rel, cos = abs(lf - ls) / abs(ls), torch.nn.functional.cosine_similarity(gf, gs, dim=0).item()
            ok = rel <= TOLERANCES[amp][0] and cos >= TOLERANCES[amp][1] and (cf, cs) == (1, 4)
            self.report(f"fused_vs_separate[{amp}]", "PASS" if ok else "FAIL", loss_rel=f"{rel:.1e}",
                        grad_cos=f"{cos:.7f}", encoder_q_calls=f"{cf}/{cs}")

    def no_host_waits(self):
        """Three real pretraining steps after a warm-up one under torch.cuda.set_sync_debug_mode("error"): any
        host wait (a .item(), a blocking copy) raises."""
        cases = {"fp32": {}, "bf16+device_augment+bone": dict(amp="bf16", device_augment=True, stream="bone"),
                 "gaussian mix": dict(model_args=dict(mix_mode="gaussian"))}
        for name, extra in cases.items():
            proc = self.processor("sync", **extra)
            proc.set_train_mode()
            proc.train_loader.sampler.set_epoch(0)
            batches = list(itertools.islice(iter(proc.train_loader), 4))
            step(proc, batches[0])  # per-device caches, cuDNN's algorithm search
            if not self.cuda:
                for batch in batches[1:]:
                    step(proc, batch)
                self.report(f"no_host_waits[{name}]", "SKIP", why="the steps ran; sync detection needs CUDA")
                continue
            synchronize(self.device)
            error = None
            torch.cuda.set_sync_debug_mode("error")
            try:
                for batch in batches[1:]:
                    step(proc, batch)
                synchronize(self.device)
            except RuntimeError as e:
                error = str(e).splitlines()[0][:160]
            finally:
                torch.cuda.set_sync_debug_mode(0)
            self.report(f"no_host_waits[{name}]", "FAIL" if error else "PASS", error=error)

    def resume(self):
        """2 epochs with deterministic: true against epoch 2 resumed from the epoch-1 checkpoint: bit for bit."""
        common = dict(num_epoch=2, save_interval=1, deterministic=True, amp="bf16" if self.cuda else "off")
        straight = self.processor("straight", **common)
        with contextlib.redirect_stdout(io.StringIO()):
            straight.start()
        resumed = self.processor("resumed", resume=os.path.join(self.tmp, "straight", "epoch1_model.pt"), **common)
        with contextlib.redirect_stdout(io.StringIO()):
            resumed.start()
        moved = [k for k, p in straight.raw_model.state_dict().items()
                 if not torch.equal(p, resumed.raw_model.state_dict()[k])]
        loss = [straight.stats[1]["train/loss"], resumed.stats[0]["train/loss"]]
        self.report("resume_bit_exact[deterministic]", "PASS" if not moved and loss[0] == loss[1] else "FAIL",
                    tensors_differing=len(moved), epoch2_loss=loss)

    def compile(self):
        """compile: true with bf16: the first step's seconds (compiling), graphs after 1, 3 steps and a kNN pass
        and 2 more steps (no new graph after the first of each), graph breaks, loss against eager."""
        if not self.cuda:
            return self.report("compile", "SKIP", why="CUDA only: minutes to compile on CPU, slower than eager there")
        from torch._dynamo.utils import counters
        losses = {}
        for mode in ("eager", "compile"):
            torch._dynamo.reset()
            counters.clear()
            torch.manual_seed(0)
            proc = self.processor(f"compile_{mode}", amp="bf16", compile=mode == "compile", knn_k=[1],
                                  model_args=dict(dropout=0.0))
            proc.set_train_mode()
            proc.train_loader.sampler.set_epoch(0)
            batches = list(itertools.islice(iter(proc.train_loader), 3))
            t0 = time.perf_counter()
            losses[mode] = float(step(proc, batches[0]))
            synchronize(self.device)
            first_s = time.perf_counter() - t0
        graphs = [counters["stats"]["unique_graphs"]]
        for batch in batches[1:]:
            step(proc, batch)
        graphs.append(counters["stats"]["unique_graphs"])
        proc.knn(proc.raw_model.encoder_q, pooled=False)
        for batch in batches[1:]:
            step(proc, batch)
        graphs.append(counters["stats"]["unique_graphs"])
        breaks = sum(counters["graph_break"].values())
        rel = abs(losses["compile"] - losses["eager"]) / abs(losses["eager"])
        ok = graphs[1] == graphs[0] and not breaks and rel < 2e-2
        self.report("compile[inductor, bf16]", "PASS" if ok else "FAIL", first_step_s=round(first_s, 1),
                    graphs=graphs, graph_breaks=breaks, loss_rel=f"{rel:.1e}")

    def torchrun(self):
        """main.py pretraining under torchrun for 2 epochs: NCCL with and without sync_bn (Gloo on CPU)."""
        ranks = max(1, min(2, torch.cuda.device_count())) if self.cuda else 2
        cases = {"nccl": [], "nccl+sync_bn": ["--sync_bn", "true"]} if self.cuda else {"gloo": ["--device", "cpu"]}
        if not self.cuda:
            self.report("torchrun[nccl+sync_bn]", "SKIP", why="SyncBatchNorm and NCCL need CUDA")
        for tag, extra in cases.items():
            work = os.path.join(self.tmp, tag)
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                       "main.py", "pretrain_skeletonclr_multi_swapv2", "--work_dir", work, "--batch_size", "16",
                       "--num_epoch", "2", "--eval_interval", "1", "--knn_k", "[1]", "--progress", "false",
                       "--num_workers", "0", "--model_args.hidden_channels", "4", "--model_args.hidden_dim", "16",
                       "--model_args.queue_size", "64", "--train_feeder_args.frames", str(FRAMES),
                       *[f"--{p}_feeder_args.{k}={v}" for p in ("train", "test") for k, v in self.data.items()], *extra]
            t0 = time.perf_counter()
            env = dict(os.environ, OMP_NUM_THREADS="1")
            run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
            log = open(os.path.join(work, "log.txt")).read() if os.path.exists(os.path.join(work, "log.txt")) else ""
            ok = run.returncode == 0 and f"{ranks} process(es)" in log and os.path.exists(
                os.path.join(work, "epoch2_model.pt"))
            self.report(f"torchrun[{tag}]", "PASS" if ok else "FAIL", ranks=ranks, rc=run.returncode,
                        seconds=round(time.perf_counter() - t0, 1),
                        error=None if ok else (run.stderr.strip().splitlines() or [""])[-1][:200])

    def throughput(self):
        """Pretraining steps/s and peak memory of SkeleMixCLR+ at full width (hidden 16, 256-d, batch 128,
        64 frames, bf16), fused query pass against separate passes."""
        if not self.cuda:
            return self.report("fused_throughput", "SKIP", why="full width on a GPU only")
        data = write_dataset(self.tmp, 128 * 6, 64)
        row = {}
        for name, fused in (("fused", True), ("separate", False)):
            cls, cfg = configure("pretrain_skeletonclr_multi_swapv2", dict(
                work_dir=os.path.join(self.tmp, f"speed_{name}"), overwrite=True, batch_size=128, num_workers=4,
                progress=False, eval_interval=0, save_interval=10 ** 9, device=str(self.device), amp="bf16",
                device_augment=True, train_feeder_args=dict(data, frames=64),
                model_args=dict(queue_size=16384, fused_queries=fused)))
            with contextlib.redirect_stdout(io.StringIO()):
                proc = cls(cfg)
            proc.set_train_mode()
            batches = iter(proc.train_loader)
            with PeakMemory(self.device) as memory:
                times = timed(lambda p=proc, b=batches: step(p, next(b)), 1, 4, self.device)
            row[name] = dict(samples_per_s=round(128 / sorted(times)[len(times) // 2], 1), peak_mb=round(memory.mb))
            del proc
            torch.cuda.empty_cache()
        speedup = row["fused"]["samples_per_s"] / row["separate"]["samples_per_s"]
        self.report("fused_throughput[full width, bf16]", "PASS" if speedup >= 1 else "FAIL",
                    speedup=round(speedup, 2), **row)


def step(proc, batch):
    """One full training step of `proc` on `batch`; its loss, on the device (reading it would wait)."""
    inputs = proc.prepare(batch)
    with proc.autocast():
        losses = proc.train_step(inputs)
    proc.optimize(losses["loss"])
    return losses["loss"].detach()


CHECKS = ["grouped_bn", "fused_vs_separate", "no_host_waits", "resume", "compile", "torchrun", "throughput"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the CPU dry run")
    parser.add_argument("--only", help="comma-separated checks of: " + ",".join(CHECKS))
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.quick and args.device == "cpu":
        torch.set_num_threads(1)  # tiny models: one thread is far faster on shared cores (no spinning peers)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        checks = Checks(args, tmp)
        for name in args.only.split(",") if args.only else CHECKS:
            try:
                getattr(checks, name)()
            except Exception as e:  # a crashing check is a failure with its error; the others still run
                traceback.print_exc()
                checks.report(name, "FAIL", error=f"{type(e).__name__}: {e}"[:300])
    result = dict(device=torch.cuda.get_device_name(checks.device) if checks.cuda else "cpu",
                  torch=torch.__version__, seconds=round(time.perf_counter() - t0, 1), results=checks.results)
    failed = [r["check"] for r in checks.results if r["status"] == "FAIL"]
    print(f"{len(checks.results) - len(failed)} of {len(checks.results)} checks passed or skipped in "
          f"{result['seconds']} s" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
