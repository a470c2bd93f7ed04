"""Speed benchmark: how close pretraining, evaluation and inference run to the machine's limit.

python tools/benchmark.py --json speed.json        # default: batch 128, fp32 + bf16 + baseline, < 10 min on 2 cores
python tools/benchmark.py --width 8 --batch 64 --json speed_w8.json   # the small model (hidden 8, 64-d features)
python tools/benchmark.py --methods skeletonclr,skelemixclr,skelemixclr_plus --options fp32,bf16,fused,combined
python tools/benchmark.py --quick                  # tiny smoke run (CI)

In one run on the current device it measures the machine's sustained fp32 (and bf16) matrix-multiply
throughput; the encoder's FLOPs per forward+backward (torch's FLOP counter) and the GFLOP/s it
achieves; samples/s of a full pretraining step (loader, augmentation, all encoder passes, loss,
backward, SGD) of SkeletonCLR, SkeleMixCLR and SkeleMixCLR+, of a linear-evaluation step (frozen
encoder forward + classifier update) and of inference; samples/s of the pretraining data loader; and
the peak memory. Every figure is the median of `--iters` timed iterations (5) after `--warmup` untimed
ones, with their min and max beside it, for plain fp32, for each speed option, and for the original
release's design (`--baseline`: `kernels: reference`, net/st_gcn.py's readable forward, a
conv-then-per-subset-einsum graph convolution on (N, C, T, V) tensors with nn.Dropout; one encoder call
per pass; per-sample numpy augmentation in the loader workers), so that the speed-up is measured in one run.
"""
import argparse
import contextlib
import inspect
import io
import json
import os
import pickle
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

if __package__ in (None, ""):  # run as a script: the repository root on sys.path
    import _bootstrap  # noqa: F401
from net.encoders import Classifier  # noqa: E402
from net.moco import MoCo  # noqa: E402
from processor import configure  # noqa: E402
from tools.benchmark_options import encoder_only, speed_options  # noqa: E402
from tools.benchmark_report import print_report, summarize  # noqa: E402
from tools.benchmark_timing import (  # noqa: E402
    PeakMemory,
    forget_compiled_graphs,
    matmul_gflops,
    release_memory,
    synchronize,
    timed,
)
from torchlight.util import cpu_amp_is_fast, keep_freed_host_memory, set_numerics  # noqa: E402

METHODS = {"skeletonclr": "pretrain_skeletonclr", "skelemixclr": "pretrain_skeletonclr_swap",
           "skelemixclr_plus": "pretrain_skeletonclr_multi_swapv2"}
MOCO_QUEUE = inspect.signature(MoCo).parameters["queue_size"].default
FIGURES = ["encoder_fwd_bwd_s", "encoder_gflops", *[f"pretrain_{m}" for m in METHODS], "linear_eval",
           "inference", "data_loading", "peak_memory_mb"]
# What an option that only changes the pretraining input path shares with fp32 (see measure_option).
SAME_AS_FP32 = ["encoder_fwd_bwd_s", "encoder_flops", "encoder_gflops", "linear_eval", "inference"]


# --- what is measured -------------------------------------------------------------------------------
def write_dataset(folder, clips, frames, seed=0):
    """Random clips (N, 3, frames, 25, 2) and labels in the generator's file format; returns the paths."""
    rng = np.random.default_rng(seed)
    data = (0.3 * rng.standard_normal((clips, 3, frames, 25, 2))).astype(np.float32)
    data_path, label_path = os.path.join(folder, "data.npy"), os.path.join(folder, "label.pkl")
    np.save(data_path, data)
    with open(label_path, "wb") as f:
        pickle.dump(([f"clip{i}" for i in range(clips)], (np.arange(clips) % 60).tolist()), f)
    return dict(data_path=data_path, label_path=label_path)


def encoder_figures(args, model_args, option, device):
    """Seconds of each timed encoder forward+backward on a (batch, 3, T, 25, 2) input in train mode, its
    FLOPs and, for compile, the seconds of the compiling call."""
    torch.manual_seed(0)
    set_numerics(tf32=option.get("tf32", False))  # as the processors do for their config
    model = Classifier(dict(model_args)).to(device).train()  # model_args: the encoder's own
    if option.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(args.encoder_batch, 3, args.frames, 25, 2, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(option.get("amp", "off"))
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext

    def step():
        model.zero_grad(set_to_none=True)
        with autocast():
            out = model(x)
        out.float().square().mean().backward()

    with FlopCounterMode(display=False) as counter:
        step()  # also the first warm-up call
    compile_s = None
    if option.get("compile"):
        forget_compiled_graphs(option)
        t0 = time.perf_counter()
        model.compile()
        step()
        synchronize(device)
        compile_s = time.perf_counter() - t0
    times = timed(step, max(args.warmup - 1, 0), args.iters, device)
    return times, counter.get_total_flops(), compile_s


def build(name, args, model_args, option, data, **extra):
    """Processor `name` on the benchmark data with the speed option applied."""
    # overwrite: every measurement builds a processor in the same scratch work_dir.
    cfg = dict(work_dir=os.path.join(args.tmp, "work_dir"), overwrite=True, batch_size=args.batch,
               test_batch_size=args.batch, num_workers=args.workers, progress=False, eval_interval=0,
               save_interval=10 ** 9, seed=1,
               device=args.device, train_feeder_args=dict(data, frames=args.frames),
               test_feeder_args=dict(data), model_args=dict(model_args))
    for key, value in {**option, **extra}.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    cls, cfg = configure(name, cfg)  # a compiling processor forgets earlier graphs itself
    with contextlib.redirect_stdout(io.StringIO()):  # the processors' start-up log lines
        return cls(cfg)


def train_steps(proc, args):
    """Seconds of full training steps: next batch from the loader, step, backward, optimizer."""
    proc.set_train_mode()
    proc.train_loader.sampler.set_epoch(0)
    batches = iter(proc.train_loader)

    def step():
        inputs = proc.prepare(next(batches))
        with proc.autocast():
            losses = proc.train_step(inputs)
        proc.optimize(losses["loss"])

    return timed(step, args.warmup, args.iters, proc.device)


def loading(proc):
    """Samples/s of the training loader alone over one epoch (its persistent workers already started)."""
    t0, count = time.perf_counter(), 0
    for batch in proc.train_loader:
        count += len(batch[1])
    return count / (time.perf_counter() - t0)


def inference(proc, args):
    """Seconds of one eval-mode, no-grad forward of a test batch already in memory."""
    x = next(iter(proc.val_loader))[0]
    model = proc.raw_model.eval()

    @torch.no_grad()
    def forward():
        inputs = proc.to_input(x)
        with proc.autocast():
            model(inputs, return_features=True)

    return timed(forward, args.warmup, args.iters, proc.device)


def record(figures, key, amount, times):
    """Into figures = (row, low, high): `amount` per second (samples or FLOPs) at the median, slowest and
    fastest of `times`."""
    row, low, high = figures
    row[key], low[key], high[key] = amount / statistics.median(times), amount / max(times), amount / min(times)


def copy_fp32_figures(figures, reference):
    """The figures an input-path-only option shares with `reference` (the fp32 row), marked as such."""
    row, low, high = figures
    row.update({k: reference[k] for k in SAME_AS_FP32}, same_as_fp32=SAME_AS_FP32)
    low.update({k: reference["min"][k] for k in SAME_AS_FP32 if k in reference["min"]})
    high.update({k: reference["max"][k] for k in SAME_AS_FP32 if k in reference["max"]})


def measure_encoder(figures, args, model_args, option, device):
    """The encoder's forward+backward seconds, FLOPs, GFLOP/s and, for compile, compiling seconds."""
    row, low, high = figures
    times, flops, compile_s = encoder_figures(args, model_args, option, device)
    row.update(encoder_fwd_bwd_s=statistics.median(times), encoder_flops=flops)
    low["encoder_fwd_bwd_s"], high["encoder_fwd_bwd_s"] = min(times), max(times)
    record(figures, "encoder_gflops", flops / 1e9, times)
    if compile_s is not None:
        row["compile_s"] = compile_s


def measure_processors(figures, args, model_args, moco_args, option, data, reuse):
    """Samples/s of each wanted pretraining method (and the loader under SkeleMixCLR+), then, unless
    `reuse`, of linear evaluation and inference."""
    for method, processor in METHODS.items():
        if method in args.methods:
            proc = build(processor, args, moco_args, option, data)
            record(figures, f"pretrain_{method}", args.batch, train_steps(proc, args))
            if method == "skelemixclr_plus":
                figures[0]["data_loading"] = loading(proc)
            del proc
    if not reuse:
        proc = build("linear_evaluation", args, model_args, option, data, cache_features=False)
        record(figures, "linear_eval", args.batch, train_steps(proc, args))
        record(figures, "inference", args.batch, inference(proc, args))
        del proc


def measure_option(name, option, args, data, device, reference=None):
    """All figures of one speed option (a dict of processor config keys); None where skipped.

    Each figure is the median over the timed iterations; row["min"] and row["max"] hold the least and
    the greatest value of each figure over those iterations (on a shared machine the spread says how far
    to trust the median). device_augment only changes the pretraining input path: its encoder,
    linear-evaluation and inference figures are `reference`'s (fp32). `fused_queries` is MoCo's key
    (net/moco.py); the baseline runs the release's one encoder call per pass.
    """
    row, low, high = dict.fromkeys(FIGURES), {}, {}
    row["config"] = {k: v for k, v in option.items() if k != "baseline"}
    # The baseline: the readable forward (kernels: reference) with one encoder call per pass.
    model_args = dict(args.model_args, kernels="reference") if option.get("baseline") else args.model_args
    moco_args = dict(args.moco_args, **model_args,
                     fused_queries=False if option.get("baseline") else option.get("fused_queries"))
    reuse = reference is not None and bool(option) and set(option) <= {"device_augment", "fused_queries"}
    option = {k: v for k, v in option.items() if k not in ("baseline", "fused_queries")}
    release_memory()
    with PeakMemory(device) as memory:
        if reuse:
            copy_fp32_figures((row, low, high), reference)
        else:
            measure_encoder((row, low, high), args, model_args, option, device)
        if encoder_only(option, args, device):
            row["skipped"] = "compile: encoder figure only (each compiled graph costs ~1 min; --compile_all)"
        else:
            measure_processors((row, low, high), args, model_args, moco_args, option, data, reuse)
    row["peak_memory_mb"], row["min"], row["max"] = memory.mb, low, high
    print(f"  {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float)), flush=True)
    return row


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results as JSON to this path")
    parser.add_argument("--quick", action="store_true", help="tiny model and batch: a smoke test")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the original release's design (default: on)")
    parser.add_argument("--batch", type=int, help="pretraining / linear-evaluation batch (default 128; quick 4)")
    parser.add_argument("--width", type=int, default=16,
                        help="the encoder's hidden channels (default 16, docs/method.md §2)")
    parser.add_argument("--hidden_dim", type=int, help="the encoder's output features (default 256 at width 16, "
                        "else 8 x width as config/ucla/*_small.yaml)")
    parser.add_argument("--encoder_batch", type=int, help="batch of the encoder figure (default: --batch)")
    parser.add_argument("--frames", type=int, help="frames per clip (default 64; quick 16)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations before timing (default 1)")
    parser.add_argument("--iters", type=int, help="timed iterations per figure (default 5; quick 1)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (the processors' default 2)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:i]")
    parser.add_argument("--options", help="comma-separated speed options to measure (default fp32,bf16; quick: all)")
    parser.add_argument("--methods", help="pretraining methods to measure (default skelemixclr_plus; quick: all)")
    parser.add_argument("--compile_all", action="store_true",
                        help="with compile on CPU, measure every figure, not only the encoder (minutes per "
                             "graph); on CUDA every figure is measured")
    parser.add_argument("--matmul_size", type=int, help="square matmul size (default 2048 CPU / 8192 GPU)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.batch = args.batch or (4 if quick else 128)
    args.encoder_batch = args.encoder_batch or args.batch
    args.frames = args.frames or (16 if quick else 64)
    args.iters = args.iters or (1 if quick else 5)
    args.methods = (args.methods or (",".join(METHODS) if quick else "skelemixclr_plus")).split(",")
    args.options = args.options or (None if quick else "fp32,bf16")
    args.hidden_dim = args.hidden_dim or (16 if quick else 256 if args.width == 16 else 8 * args.width)
    args.width = 4 if quick else args.width
    args.model_args = dict(hidden_channels=args.width, hidden_dim=args.hidden_dim)
    # The MoCo queue must hold a whole number of batches (docs/method.md §3): MoCo's default, rounded down to one.
    queue = args.batch * 16 if quick else MOCO_QUEUE // args.batch * args.batch
    args.moco_args = dict(args.model_args, queue_size=queue)
    return args


def chosen_options(args, device):
    """The options to measure, the baseline first when wanted, and {name: why skipped}."""
    wanted = args.options.split(",") if args.options else []
    options, skipped = speed_options(device, args.quick, wanted)
    if wanted:
        options = {k: v for k, v in options.items() if k in wanted}
    if args.baseline:
        options = {"baseline": {"baseline": True}, **options}
    return options, skipped


def matmul_reference(args, device):
    """The matmul size and its GFLOP/s in fp32 and, where bf16 is fast here, bf16: what the encoder is
    compared to."""
    n = args.matmul_size or (512 if args.quick else 2048 if device.type == "cpu" else 8192)
    matmul = {"fp32": matmul_gflops(device, torch.float32, n, 1, 3 if args.quick else 5)}
    if device.type == "cuda" or cpu_amp_is_fast("bf16"):
        matmul["bf16"] = matmul_gflops(device, torch.bfloat16, n, 1, 3 if args.quick else 5)
    print(f"matmul {n}x{n}: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in matmul.items()), flush=True)
    return n, matmul


def measure_options(options, args, device):
    """{name: row} of every option, on a random dataset in a scratch folder; later rows may reuse fp32's."""
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        args.tmp = tmp
        clips = args.batch * (args.warmup + max(args.iters, 3))
        data = write_dataset(tmp, clips, args.frames)
        for name, option in options.items():
            rows[name] = measure_option(name, option, args, data, device, rows.get("fp32"))
    return rows


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    args.device = str(device)
    # As the processors do on CPU, for every option and the baseline alike (torchlight.util).
    host_memory_kept = device.type == "cpu" and keep_freed_host_memory()
    t_start = time.perf_counter()
    options, skipped = chosen_options(args, device)
    n, matmul = matmul_reference(args, device)
    result = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else
                  f"cpu ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})",
                  torch=torch.__version__, settings={k: v for k, v in vars(args).items() if k != "tmp"},
                  matmul_size=n, matmul_gflops=matmul, host_memory_kept=host_memory_kept, skipped=skipped,
                  compile_cache=dict(reset_before_each_compiled_model=True,
                                     recompile_limit=torch._dynamo.config.recompile_limit),
                  options={})
    result["options"] = measure_options(options, args, device)
    summarize(result)
    result["seconds"] = time.perf_counter() - t_start
    print_report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
