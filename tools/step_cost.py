"""Compute of one pretraining step of any config and encoder: GFLOPs, encoder parameters and seconds.

python tools/step_cost.py --config config/ucla/skelemixclr_multi_swap_ucla_xview_small.yaml
python tools/step_cost.py --config config/ucla/skeletonclr_ucla_xview_small.yaml --encoder.name mamp \
    --encoder.dim_feat 32 --encoder.depth 4 --encoder.num_heads 2 --encoder.num_frames 32 --amp off

Further `--key value` pairs override the config as on main.py's command line. The step is the whole
training step (augmentation on the batch, every encoder pass, loss, backward, SGD) on random clips of the
config's shape (frames, the layout's joints), in the threads main.py would take, with the queue the config gets
on its own training clips (`queue_size: auto`) where their file is here. GFLOPs are torch's FLOP counter over
one forward + backward (key encoder included): matrix products, convolutions and attention only, and torch 2.13
counts a grouped convolution's weight gradient once per group (the fused query pass reads high). Seconds are the
median of `--iters` steps; wall_s is the whole measurement, compiling included. Prints one JSON line. What else
runs on the machine moves the seconds, never the GFLOPs.
"""
import argparse
import contextlib
import io
import json
import os
import pickle
import statistics
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: the repository root on sys.path
    import _bootstrap  # noqa: F401
from torchlight.threads import configure_openmp  # noqa: E402

configure_openmp()  # before torch loads OpenMP, as main.py
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from net.moco import auto_queue_size  # noqa: E402
from net.utils.layouts import DEFAULT_LAYOUT, get_layout  # noqa: E402
from processor import configure  # noqa: E402
from tools.benchmark import train_steps  # noqa: E402
from torchlight.config import load_yaml, parse_overrides  # noqa: E402
from torchlight.util import git_commit  # noqa: E402

NO_DATA = dict(data_path=None, label_path=None)  # no validation clips: the config's own may not exist here


def synthetic_data(folder, clips, frames, joints, classes):
    """Feeder arguments of `clips` random clips (3, frames, joints, 2) with labels cycling over `classes`."""
    rng = np.random.default_rng(0)
    np.save(f"{folder}/x.npy", (0.3 * rng.standard_normal((clips, 3, frames, joints, 2))).astype(np.float32))
    with open(f"{folder}/y.pkl", "wb") as f:
        pickle.dump(([f"c{i}" for i in range(clips)], (np.arange(clips) % classes).tolist()), f)
    return dict(data_path=f"{folder}/x.npy", label_path=f"{folder}/y.pkl")


def step_flops(proc):
    """FLOPs of one training step's forward and backward (the optimizer's update is not counted)."""
    proc.set_train_mode()
    inputs = proc.prepare(next(iter(proc.train_loader)))
    with FlopCounterMode(display=False) as counter:
        with proc.autocast():
            loss = proc.train_step(inputs)["loss"]
        loss.backward()
    proc.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def training_clips(config, overrides):
    """How many clips the config's training file holds, or None where the file is not here."""
    path = overrides.get("train_feeder_args.data_path") or config.get("train_feeder_args", {}).get("data_path")
    return len(np.load(path, mmap_mode="r")) if path and os.path.isfile(path) else None


def step_cost(config_file, overrides, iters=5, warmup=2):
    """{config, overrides, method, encoder, batch_size, amp, queue_size, gflop_step, encoder_params, s_per_step,
    wall_s, threads, iters, commit} of the config's step."""
    start, config = time.perf_counter(), load_yaml(config_file)
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(f"{tmp}/shape")  # the config's shape first, read from a config whose data files exist
        shape_data = dict(train_feeder_args=synthetic_data(f"{tmp}/shape", 1, 1, 1, 1), test_feeder_args=NO_DATA)
        probe = configure("pretrain", config, dict(overrides, work_dir=tmp, **shape_data))[1]
        frames = probe["train_feeder_args"].get("frames") or 64
        joints = get_layout(probe["layout"] or DEFAULT_LAYOUT).num_joints
        batch = probe["batch_size"]
        clips = batch * (warmup + iters + 2)
        data = synthetic_data(tmp, clips, frames, joints, probe["model_args"]["num_class"])
        queue = probe["model_args"].get("queue_size")
        if queue == "auto":
            queue = auto_queue_size(training_clips(config, overrides) or clips, batch)
        run = dict(overrides, work_dir=f"{tmp}/run", progress=False, train_feeder_args=data, test_feeder_args=NO_DATA,
                   eval_interval=0, **{"model_args.queue_size": queue})
        cls, cfg = configure("pretrain", config, run)
        with contextlib.redirect_stdout(io.StringIO()):
            proc = cls(cfg)
        flops = step_flops(proc)
        times = train_steps(proc, argparse.Namespace(warmup=warmup, iters=iters))
        encoder = proc.raw_model.encoder_q.encoder
        return dict(config=config_file, overrides=overrides, method=cfg["method"], encoder=cfg["encoder"],
                    batch_size=batch, amp=cfg["amp"], queue_size=queue, gflop_step=flops / 1e9,
                    encoder_params=sum(p.numel() for p in encoder.parameters()),
                    s_per_step=statistics.median(times), wall_s=time.perf_counter() - start,
                    threads=torch.get_num_threads(), iters=iters, commit=git_commit())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args, rest = parser.parse_known_args(argv)
    print(json.dumps(step_cost(args.config, parse_overrides(rest), args.iters, args.warmup)))


if __name__ == "__main__":
    sys.exit(main())
