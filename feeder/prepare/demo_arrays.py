"""The demo's dataset: synthetic `.skeleton` files (feeder/prepare/demo.py) through the NTU converter and
preprocessing, the path a user's NTU data takes; for `python main.py demo`, the pictures and the tests."""
import contextlib
import fcntl
import io
import os
import shutil

from feeder.prepare.demo import generate
from feeder.prepare.ntu import gendata
from feeder.prepare.preprocess import preprocess
from torchlight.io import atomic_path


def demo_arrays(root, num_files, frames=64, seed=0, nuisance=0.0, timing=0.0, quiet=False):
    """Arrays of `num_files` synthetic clips under `root` (raw/, gendata/, frame<frames>/), each step skipped
    when it finished before (its `<step>.done` marker, written last); a step's folder without its marker,
    left by a killed run, is rebuilt. Returns the NTU-60-style xsub folder of {train,val}_{position,motion}.npy
    and labels. `quiet` silences the converters' progress bars and counts. A second demo building the same
    `root` waits for the first (`root`/demo.lock) instead of deleting its unfinished steps."""
    raw, gen, arrays = (os.path.join(root, d) for d in ("raw", "gendata", f"frame{frames}"))
    silence = (contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()))
    os.makedirs(root, exist_ok=True)
    with contextlib.ExitStack() as stack, open(os.path.join(root, "demo.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, however the process ends
        for redirect in silence if quiet else ():
            stack.enter_context(redirect)
        finished_step(raw, lambda: generate(raw, num_files=num_files, seed=seed, nuisance=nuisance, timing=timing))
        finished_step(gen, lambda: gendata(raw, gen, benchmarks=["xsub"]))
        finished_step(arrays, lambda: preprocess(gen, arrays, frames))
    return os.path.join(arrays, "xsub")


def finished_step(folder, make):
    """Run `make()` to fill `folder` unless `<folder>.done` exists; what an unfinished run left is removed first."""
    marker = folder + ".done"
    if os.path.exists(marker):
        return
    shutil.rmtree(folder, ignore_errors=True)
    make()
    with atomic_path(marker) as tmp:
        open(tmp, "w").close()
