"""torchlight/io.py: work-directory locks, stale temporaries, checked reads of text and arrays."""
import errno
import json
import multiprocessing
import os
import pickle
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from torchlight.io import WorkDirError, WorkDirLock, claim_work_dir, first_non_finite, read_text_lines

HOLD_LOCK = ("import sys, time; from torchlight.io import WorkDirLock; WorkDirLock(sys.argv[1]); "
             "print('held', flush=True); time.sleep(60)")


def hold_lock(work_dir):
    """A process holding the run.lock of `work_dir` (kill it to end the hold)."""
    other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(work_dir)], stdout=subprocess.PIPE, text=True)
    assert other.stdout.readline().strip() == "held"
    return other


def snapshot(folder):
    """Bytes and modification time of every file under `folder`."""
    return {os.path.relpath(os.path.join(d, n), folder): (open(os.path.join(d, n), "rb").read(),
                                                          os.stat(os.path.join(d, n)).st_mtime_ns)
            for d, _, names in os.walk(folder) for n in names}


def test_lock_names_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    other = hold_lock(tmp_path)
    try:
        with pytest.raises(WorkDirError, match=rf"in use by pid {other.pid} on {socket.gethostname()} since "):
            WorkDirLock(str(tmp_path))
    finally:
        other.kill()
        other.wait()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == other.pid  # left behind by the killed run
    lock = WorkDirLock(str(tmp_path))  # the holder is gone: the kernel dropped its lock
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run.lock").exists()
    (tmp_path / "run.lock").write_text("")  # an empty file nobody holds is no lock either
    WorkDirLock(str(tmp_path)).release()


def race(work_dir, start, results):
    start.wait()
    try:
        lock = WorkDirLock(work_dir)
    except WorkDirError:
        results.put("refused")
        return
    results.put("won")
    time.sleep(0.5)  # hold it while the others try
    lock.release()


def test_of_several_runs_taking_a_stale_lock_at_once_exactly_one_wins(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for trial in range(8):
        work_dir = str(tmp_path / f"t{trial}")
        os.makedirs(work_dir)
        with open(os.path.join(work_dir, "run.lock"), "w") as f:  # a killed run's lock file
            json.dump(dict(pid=999999999, host=socket.gethostname(), start="then"), f)
        start, results = ctx.Event(), ctx.Queue()
        runs = [ctx.Process(target=race, args=(work_dir, start, results)) for _ in range(4)]
        for run in runs:
            run.start()
        start.set()
        outcomes = sorted(results.get(timeout=30) for _ in runs)
        for run in runs:
            run.join()
        assert outcomes == ["refused", "refused", "refused", "won"], trial


def test_a_full_disk_at_start_leaves_no_lock_and_a_read_only_dir_is_one_line(tmp_path, monkeypatch):
    from torchlight.config import ConfigError

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "write", full)
    with pytest.raises(ConfigError, match=f"work_dir {tmp_path} is not writable .No space left on device.: free"):
        WorkDirLock(str(tmp_path))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(os, "makedirs", read_only)
    with pytest.raises(ConfigError, match=f"work_dir {tmp_path / 'run'} is not writable .Read-only file system."):
        claim_work_dir(str(tmp_path / "run"))


def test_a_work_dir_with_another_runs_files_is_refused(tmp_path):
    (tmp_path / "log.txt").write_text("a start that failed before its first checkpoint\n")
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    claim_work_dir(str(tmp_path)).release()  # its corrected rerun may use the folder
    (tmp_path / "epoch3_model.pt").write_bytes(b"")
    (tmp_path / "result.json").write_text("{}")
    with pytest.raises(WorkDirError, match="holds another run's files .epoch3_model.pt, result.json."):
        claim_work_dir(str(tmp_path))
    assert not (tmp_path / "run.lock").exists()
    claim_work_dir(str(tmp_path), resume=str(tmp_path / "epoch3_model.pt")).release()
    claim_work_dir(str(tmp_path), overwrite=True).release()
    with pytest.raises(WorkDirError):  # a checkpoint of another directory does not make this one ours
        claim_work_dir(str(tmp_path), resume=str(tmp_path / "other" / "epoch3_model.pt"))


def test_stale_temporaries_are_only_the_writers_own(tmp_path):
    from torchlight.io import atomic_path, temp_name
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temp_name(tmp_path / "epoch2_model.pt", pid=int(dead.stdout))
    live = temp_name(tmp_path / "epoch4_model.pt", pid=os.getppid())
    for name in (stale, live, tmp_path / "results.tmp4000000.txt", tmp_path / "notes.partial-4000000.txt"):
        open(name, "w").close()
    lock = claim_work_dir(str(tmp_path))  # the next start in the folder
    lock.release()
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(live), "notes.partial-4000000.txt",
                                                   "results.tmp4000000.txt"])
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "x.npy") as tmp:
        assert os.path.basename(tmp).startswith(".x.partial-") and tmp.endswith(".npy")
        open(tmp, "w").close()
        raise RuntimeError("killed")
    assert not (tmp_path / "x.npy").exists() and not os.path.exists(tmp)


def test_text_that_is_not_utf8_names_file_and_line(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"1\n2\n\xe93\n")
    with pytest.raises(ValueError, match=r"a\.txt:3: byte 0xe9 is not UTF-8 text"):
        read_text_lines(str(tmp_path / "a.txt"))
    (tmp_path / "b.txt").write_bytes(b"1\r\n2\n")
    assert read_text_lines(str(tmp_path / "b.txt")) == ["1", "2"]


def test_first_non_finite_row_across_chunks():
    x = np.zeros((700, 2, 3), np.float32)
    assert first_non_finite(x) is None
    x[513, 1, 2] = -np.inf
    x[600, 0, 0] = np.nan
    assert first_non_finite(x) == 513 and first_non_finite(x, chunk=7) == 513


def test_safe_pickle_load_keeps_label_pickles_and_refuses_code(tmp_path, crafted):
    from torchlight.config import ConfigError
    from torchlight.io import safe_pickle_load
    content = (["S001C001P001R001A001.skeleton", "b"], [np.int64(3), 4])
    with open(tmp_path / "label.pkl", "wb") as f:
        pickle.dump(content, f)
    assert safe_pickle_load(str(tmp_path / "label.pkl")) == content
    marker, payload = crafted
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump((["a"], [payload]), f)
    with pytest.raises(ConfigError, match=r"evil.pkl: not a label pickle, not loaded \(it refers to io.open"):
        safe_pickle_load(str(tmp_path / "evil.pkl"), "label pickle")
    assert not marker.exists()
