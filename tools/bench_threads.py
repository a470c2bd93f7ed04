"""Load benchmark: the small recipe's pretraining step on an idle CPU and beside busy processes.

python tools/bench_threads.py                       # every policy x 0, 1, 2 busy processes (~5 min on 2 cores)
python tools/bench_threads.py --policies project --loads 0 --iters 5

A busy process is one single-threaded Python loop (`while True: pass`), what a browser tab, an IDE's
indexer or a second one-thread experiment puts on a core. Each measurement runs in a fresh process, so
that OpenMP reads its environment anew. Policies:
  torch-default   as torch leaves it: one thread per core, OpenMP's default (spinning) wait policy
  active-1        one thread, spinning
  passive-all     one thread per core, OpenMP's passive wait policy
  project         what `python main.py` does (torchlight/threads.py)
The step is SkeleMixCLR+'s with config/ucla/skelemixclr_multi_swap_ucla_xview_small.yaml (8 channels, batch 64,
32 frames, one body, bf16 where the CPU has native kernels) on random NW-UCLA-shaped clips.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CORES = os.cpu_count() or 1
# name -> (OMP_WAIT_POLICY, cpu_threads); "project" leaves both to main.py's choice (torchlight/threads.py)
POLICIES = {
    "torch-default": ("", CORES),
    "active-1": ("ACTIVE", 1),
    "passive-all": ("PASSIVE", CORES),
    "project": (None, "auto"),
}
CONFIG = "config/ucla/skelemixclr_multi_swap_ucla_xview_small.yaml"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(args):
    """In a fresh process: time `iters` pretraining steps after `warmup`; print one JSON line."""
    sys.path.insert(0, ROOT)
    from torchlight.threads import configure_openmp
    configure_openmp()  # as main.py: a no-op where the policy set OMP_WAIT_POLICY
    import contextlib
    import io

    import torch

    from processor import configure
    from tools.benchmark import train_steps
    from tools.step_cost import synthetic_data
    from torchlight.config import load_yaml

    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_data(tmp, 64 * (args.warmup + args.iters), 32, 20, 10)  # one epoch holds every step
        overrides = dict(work_dir=f"{tmp}/run", progress=False, device="cpu", train_feeder_args=data,
                         test_feeder_args={}, cpu_threads=args.cpu_threads)
        cls, cfg = configure("pretrain_skeletonclr_multi_swapv2", load_yaml(os.path.join(ROOT, CONFIG)), overrides)
        with contextlib.redirect_stdout(io.StringIO()):
            proc = cls(cfg)
        times = train_steps(proc, argparse.Namespace(warmup=args.warmup, iters=args.iters))
    print(json.dumps({"threads": torch.get_num_threads(), "s_per_step": statistics.median(times),
                      "min": min(times), "max": max(times)}))


def measure(policy, load, args):
    """Median seconds a step of `policy` beside `load` busy processes."""
    wait, threads = POLICIES[policy]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if wait is not None:  # "": set but empty, which OpenMP ignores and configure_openmp leaves alone
        env["OMP_WAIT_POLICY"] = wait
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
    try:
        time.sleep(0.5 if load else 0)
        command = [sys.executable, __file__, "--child", "--iters", str(args.iters), "--warmup", str(args.warmup),
                   "--cpu_threads", str(threads)]
        out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    if out.returncode:
        raise SystemExit(f"error: the {policy} measurement failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--loads", default="0,1,2")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cpu_threads", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.cpu_threads = args.cpu_threads if args.cpu_threads == "auto" else int(args.cpu_threads)
        return child(args)
    loads = [int(n) for n in args.loads.split(",")]
    print(f"s/step (median of {args.iters}), SkeleMixCLR+ small recipe; {os.cpu_count()} cores")
    print(f"{'policy':<14} {'threads':>7} " + " ".join(f"{f'{n} busy':>8}" for n in loads))
    results = {}
    for policy in args.policies.split(","):
        row = {n: measure(policy, n, args) for n in loads}
        results[policy] = {str(n): r for n, r in row.items()}
        threads = row[loads[0]]["threads"]
        print(f"{policy:<14} {threads:>7} " + " ".join(f"{row[n]['s_per_step']:>8.3f}" for n in loads), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
