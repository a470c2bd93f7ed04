"""The demo's dataset: synthetic `.skeleton` files (feeder/demo_data.py) through the NTU converter and
preprocessing, the path a user's NTU data takes; for `python main.py demo`, the pictures and the tests."""
import contextlib
import io
import os

from feeder import preprocess_ntu
from feeder.demo_data import generate
from feeder.ntu_gendata import gendata


def demo_arrays(root, num_files, frames=64, seed=0, nuisance=0.0, timing=0.0, quiet=False):
    """Arrays of `num_files` synthetic clips under `root` (raw/, gendata/, frame<frames>/), each step skipped
    when its output exists; returns the NTU-60-style xsub folder of {train,val}_{position,motion}.npy and
    labels. `quiet` silences the converters' progress bars and counts."""
    raw, gen, arrays = (os.path.join(root, d) for d in ("raw", "gendata", f"frame{frames}"))
    silence = (contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()))
    with contextlib.ExitStack() as stack:
        for redirect in silence if quiet else ():
            stack.enter_context(redirect)
        if not os.path.isdir(raw) or not os.listdir(raw):
            generate(raw, num_files=num_files, seed=seed, nuisance=nuisance, timing=timing)
        if not os.path.exists(os.path.join(gen, "xsub", "val_label.pkl")):
            gendata(raw, gen, benchmarks=["xsub"])
        if not os.path.exists(os.path.join(arrays, "xsub", "val_label.npy")):
            preprocess_ntu.main(["--dataset_path", gen, "--out_folder", arrays, "--frames", str(frames)])
    return os.path.join(arrays, "xsub")
