"""feeder/prepare/demo_arrays.py: a step that a killed run left unfinished is rebuilt, a finished one reused."""
import fcntl
import os
import threading

import numpy as np

from feeder.prepare.demo_arrays import demo_arrays


def test_a_partial_folder_is_rebuilt_and_a_finished_one_reused(tmp_path):
    xsub = demo_arrays(str(tmp_path), num_files=30, frames=8, seed=0, quiet=True)
    before = np.load(os.path.join(xsub, "train_position.npy"))
    raw = tmp_path / "raw"
    os.remove(tmp_path / "raw.done")  # as if generation had been killed after a few files
    for name in sorted(os.listdir(raw))[5:]:
        os.remove(raw / name)
    os.remove(tmp_path / "gendata.done")
    os.remove(tmp_path / "frame8.done")
    demo_arrays(str(tmp_path), num_files=30, frames=8, seed=0, quiet=True)
    assert len(os.listdir(raw)) == 30
    assert np.array_equal(np.load(os.path.join(xsub, "train_position.npy")), before)
    mtime = os.path.getmtime(os.path.join(xsub, "train_position.npy"))
    demo_arrays(str(tmp_path), num_files=30, frames=8, seed=0, quiet=True)  # finished: nothing redone
    assert os.path.getmtime(os.path.join(xsub, "train_position.npy")) == mtime


def test_a_second_demo_on_the_same_folder_waits_for_the_first(tmp_path):
    """Before: it deleted the first one's unfinished step (no marker yet) and rebuilt it under it."""
    tmp_path.joinpath("raw").mkdir()
    tmp_path.joinpath("raw", "first_demo_is_writing").write_text("")
    holder = open(tmp_path / "demo.lock", "w")
    fcntl.flock(holder, fcntl.LOCK_EX)  # the first demo, mid-generation
    second = threading.Thread(target=demo_arrays, args=(str(tmp_path), 30, 8, 0), kwargs=dict(quiet=True))
    second.start()
    second.join(timeout=1.0)
    assert second.is_alive() and (tmp_path / "raw" / "first_demo_is_writing").exists()  # waiting, nothing touched
    holder.close()
    second.join()
    assert (tmp_path / "frame8.done").exists()
