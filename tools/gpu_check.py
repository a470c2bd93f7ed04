"""GPU check: the CUDA paths a CPU cannot exercise, each reported PASS / FAIL / SKIP with its numbers.

python tools/gpu_check.py --json gpu_check.json          # one GPU, a first session: under 8 minutes
python tools/gpu_check.py --device cpu --quick           # dry run on CPU (1-2 min): CUDA-only checks SKIP

Checks: grouped BatchNorm equal to separate calls; the fused query pass equal to separate passes (loss,
gradients, BatchNorm running statistics) in fp64, fp32, bf16 and fp16; one training step on the device equal
to the same step on the CPU; no host wait in real pretraining steps (torch.cuda.set_sync_debug_mode("error"));
a bit-exact resume with deterministic: true; compile time and graph count; `--speed fast` pretraining as a
user starts it; torchrun (NCCL, with and without sync_bn; Gloo on CPU); fused against separate passes'
throughput and peak memory at full width. The checks share a budget of BUDGET_SECONDS: a subprocess's
timeout never runs past it, and a check that would start after it SKIPs. Exits non-zero when a check fails.
"""
import argparse
import contextlib
import copy
import io
import json
import os
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
from tools import gpu_check_runs as runs  # noqa: E402
from tools.benchmark import write_dataset  # noqa: E402
from torchlight.util import set_numerics  # noqa: E402

FRAMES = 16
BUDGET_SECONDS = 420  # every check together: 7 minutes, and the check running at the deadline may finish
AMPS = {"fp64": None, "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# (loss relative error, least gradient cosine, BatchNorm running statistics' error: buffers_err) of fused
# against separate passes: two roundings of one function
TOLERANCES = {"fp64": (1e-9, 1 - 1e-9, 1e-9), "fp32": (1e-4, 0.9999, 1e-4), "bf16": (3e-2, 0.9, 3e-2),
              "fp16": (5e-3, 0.98, 5e-3)}
# One fp32 step with TF32 off on the device against the CPU: loss relative error, least gradient cosine,
# error of the buffers after it (BatchNorm running statistics, the queue; buffers_err)
VS_CPU = dict(loss_rel=1e-3, grad_cos=0.999, buffers_err=1e-3)


class Checks:
    def __init__(self, args, tmp):
        self.args, self.tmp, self.results = args, tmp, []
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.frames, self.deadline = FRAMES, time.perf_counter() + args.budget
        self.data = write_dataset(tmp, 64 if args.quick else 256, FRAMES)

    def seconds_left(self):
        return int(self.deadline - time.perf_counter())

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
            stats = buffers_err(fused.encoder_q, separate.encoder_q)  # each pass's BN statistics, in order
            ok = (rel <= TOLERANCES[amp][0] and cos >= TOLERANCES[amp][1] and stats <= TOLERANCES[amp][2]
                  and (cf, cs) == (1, 4))
            self.report(f"fused_vs_separate[{amp}]", "PASS" if ok else "FAIL", loss_rel=f"{rel:.1e}",
                        grad_cos=f"{cos:.7f}", bn_stats_err=f"{stats:.1e}", encoder_q_calls=f"{cf}/{cs}",
                        tolerances=TOLERANCES[amp])

    def step_vs_cpu(self):
        """One SkeleMixCLR+ training step (loader batch, SkeleMix, 7 InfoNCE losses, backward, SGD, EMA, enqueue)
        on the device against the same step on the CPU: same seed, initial weights, batch and draws; fp32 with
        TF32 off, no dropout (the CPU draws its masks differently), separate query passes on both."""
        out, batch = [], None
        for device in (self.device, torch.device("cpu")):
            torch.manual_seed(0)
            proc = self.processor(f"vs_cpu_{device.type}", device=str(device), tf32=False,
                                  model_args=dict(dropout=0.0, fused_queries=False))
            proc.set_train_mode()
            batch = batch or next(iter(proc.train_loader))
            loss = runs.step(proc, batch).item()
            grads = torch.cat([p.grad.double().flatten().cpu() for p in proc.raw_model.parameters()
                               if p.grad is not None])
            out.append((loss, grads, proc.raw_model))
        (ld, gd, md), (lc, gc, mc) = out
        rel, cos = abs(ld - lc) / abs(lc), torch.nn.functional.cosine_similarity(gd, gc, dim=0).item()
        stats = buffers_err(md, mc)
        ok = rel <= VS_CPU["loss_rel"] and cos >= VS_CPU["grad_cos"] and stats <= VS_CPU["buffers_err"]
        self.report(f"step_vs_cpu[{self.device.type} vs cpu, fp32]", "PASS" if ok else "FAIL", loss=round(lc, 5),
                    loss_rel=f"{rel:.1e}", grad_cos=f"{cos:.7f}", buffers_err=f"{stats:.1e}", tolerances=VS_CPU)


def buffers_err(a, b):
    """Largest difference of any floating-point buffer (BN running statistics, queue) of modules `a` and `b`,
    per buffer over max(1, max |b|): relative for large buffers, absolute for small ones (a running mean of
    ~1e-11 after a convolution's bias carries no relative precision)."""
    pairs = [(x.double().cpu(), y.double().cpu()) for (_, x), (_, y) in zip(a.named_buffers(), b.named_buffers())
             if x.is_floating_point()]
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1)).item() for x, y in pairs)


CHECKS = {"grouped_bn": Checks.grouped_bn, "fused_vs_separate": Checks.fused_vs_separate,
          "step_vs_cpu": Checks.step_vs_cpu, "no_host_waits": runs.no_host_waits, "resume": runs.resume,
          "compile": runs.compile_check, "fast_pretrain": runs.fast_pretrain, "torchrun": runs.torchrun,
          "throughput": runs.throughput}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the CPU dry run")
    parser.add_argument("--only", help="comma-separated checks of: " + ",".join(CHECKS))
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--budget", type=int, default=BUDGET_SECONDS, help="seconds for every check together")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(CHECKS)
    if set(names) - set(CHECKS):
        parser.error(f"unknown checks {sorted(set(names) - set(CHECKS))}; known: {', '.join(CHECKS)}")
    if args.quick and args.device == "cpu":
        torch.set_num_threads(1)  # tiny models: one thread is far faster on shared cores (no spinning peers)
    print(f"budget {args.budget} s; subprocess timeouts (s): {runs.TIMEOUTS}", flush=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        checks = Checks(args, tmp)
        for name in names:
            if checks.seconds_left() <= 0:
                checks.report(name, "SKIP", why=f"the budget of {args.budget} s is spent")
                continue
            try:
                CHECKS[name](checks)
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
