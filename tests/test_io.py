"""torchlight/io.py: work-directory locks, stale temporaries, checked reads of text and arrays."""
import json
import os
import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest

from torchlight.io import WorkDirError, WorkDirLock, claim_work_dir, first_non_finite, read_text_lines


def test_lock_names_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run.lock").write_text(json.dumps(dict(pid=other.pid, host=socket.gethostname(),
                                                           start="2026-01-02 03:04:05")))
        with pytest.raises(WorkDirError, match=rf"in use by pid {other.pid} on {socket.gethostname()} since "
                                               "2026-01-02 03:04:05"):
            WorkDirLock(str(tmp_path))
    finally:
        other.kill()
        other.wait()
    lock = WorkDirLock(str(tmp_path))  # the holder is gone: its lock is stale
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run.lock").exists()
    (tmp_path / "run.lock").write_text("")  # being written by another run this instant, or damaged
    with pytest.raises(WorkDirError, match="is locked by .*run.lock, which cannot be read"):
        WorkDirLock(str(tmp_path))


def test_a_work_dir_with_another_runs_files_is_refused(tmp_path):
    (tmp_path / "log.txt").write_text("a start that failed before its config\n")
    claim_work_dir(str(tmp_path)).release()
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    (tmp_path / "epoch3_model.pt").write_bytes(b"")
    with pytest.raises(WorkDirError, match="holds another run's files .config.yaml, epoch3_model.pt."):
        claim_work_dir(str(tmp_path))
    assert not (tmp_path / "run.lock").exists()
    claim_work_dir(str(tmp_path), resume=str(tmp_path / "epoch3_model.pt")).release()
    claim_work_dir(str(tmp_path), overwrite=True).release()
    with pytest.raises(WorkDirError):  # a checkpoint of another directory does not make this one ours
        claim_work_dir(str(tmp_path), resume=str(tmp_path / "other" / "epoch3_model.pt"))


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
