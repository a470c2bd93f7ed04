"""File helpers without torch: atomic outputs, a run logger, work-directory locks, checked reads, manifests."""
import atexit
import codecs
import contextlib
import fcntl
import json
import os
import pickle
import re
import shutil
import socket
import sys
import time

import numpy as np
import yaml

from .config import ConfigError


def temp_name(path, pid=None):
    """The name `atomic_path` writes `path` under first: `<dir>/.<stem>.partial-<pid>-<random><ext>`.

    Hidden, and of a pattern no user file has, so `remove_stale_temps` deletes only what this project's
    writer left; the extension stays, so numpy/torch writers do not append another.
    """
    folder, name = os.path.split(os.fspath(path))
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.partial-{os.getpid() if pid is None else pid}-{os.urandom(4).hex()}{ext}")


TMP_NAME = re.compile(r"^\..+\.partial-(\d+)-[0-9a-f]{8}(\.[^.]*)?$")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    An interrupted or failing writer therefore never leaves a file that looks finished.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class Logger:
    """Prints timestamped lines and appends them to `<work_dir>/log.txt` (silent when `enabled` is false)."""

    def __init__(self, work_dir=None, enabled=True):
        self.enabled = enabled
        self.file = None
        if enabled and work_dir:
            os.makedirs(work_dir, exist_ok=True)
            self.file = open(os.path.join(work_dir, "log.txt"), "a")

    def __call__(self, msg):
        if not self.enabled:
            return
        line = f"[{time.strftime('%m.%d.%y|%X')}] {msg}"
        print(line, file=sys.stdout, flush=True)
        if self.file:
            print(line, file=self.file, flush=True)


def pid_alive(pid):
    """Whether process `pid` runs on this host (a process we may not signal still runs)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


MANIFEST = "manifest.json"  # settings of a folder of outputs, written last


def remove_stale_temps(folder):
    """Delete `atomic_path` temporaries in `folder` whose writer is gone (killed runs); returns their names."""
    removed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        match = TMP_NAME.match(name)
        if match and not pid_alive(int(match.group(1))):
            path = os.path.join(folder, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)  # a staging folder, or a file
            removed.append(name)
            print(f"removed {os.path.join(folder, name)}, left by an interrupted run")
    return removed


# What a label or scores pickle of this project holds besides lists, tuples, dicts, strings and numbers:
# numpy arrays and scalars. numpy 2 names its modules numpy._core, numpy 1 and older pickles numpy.core;
# protocol 2 pickles carry an array's bytes through _codecs.encode, protocol 5 through _frombuffer.
# Each of these only builds data.
_NP_CORE = getattr(np, "_core", None) or np.core
SAFE_PICKLE_GLOBALS = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                       ("_codecs", "encode"): codecs.encode}
for _package in ("numpy._core", "numpy.core"):
    SAFE_PICKLE_GLOBALS.update({(f"{_package}.multiarray", "_reconstruct"): _NP_CORE.multiarray._reconstruct,
                                (f"{_package}.multiarray", "scalar"): _NP_CORE.multiarray.scalar,
                                (f"{_package}.numeric", "_frombuffer"): _NP_CORE.numeric._frombuffer})


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only data: any global outside SAFE_PICKLE_GLOBALS is refused."""

    def find_class(self, module, name):
        if (module, name) not in SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a data file never holds")
        return SAFE_PICKLE_GLOBALS[module, name]


def safe_pickle_load(path, what="pickle"):
    """The lists, dicts, strings, numbers and numpy arrays pickled in `path`, never running its code.

    A pickle that would import anything else (a crafted file) or is no pickle at all is a one-line
    ConfigError naming the file.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{what} {path} not found")
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as err:
        raise ConfigError(f"{path}: not a {what}, not loaded ({err})") from None


def read_text_lines(path):
    """The lines of text file `path`; bytes that are not UTF-8 are a ValueError naming file and line."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: byte {raw[err.start]:#04x} is not UTF-8 text") from None
    return text.splitlines()


def load_npy(path, mmap=True, what="data file"):
    """The array in `.npy` file `path` (memory-mapped when `mmap`); a missing, empty or truncated file is
    an error naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} not found")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a complete numpy array file ({err})") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: not a numpy array file")
    return array


def first_non_finite(array, chunk=256):
    """Index along axis 0 of the first row of `array` holding NaN or inf, or None (in chunks: may be memory-mapped)."""
    for start in range(0, len(array), chunk):
        block = np.asarray(array[start:start + chunk])
        bad = ~np.isfinite(block.reshape(len(block), -1)).all(1)
        if bad.any():
            return start + int(np.argmax(bad))
    return None


def read_manifest(folder):
    """The settings `write_manifest` recorded for the outputs in `folder`, or None."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_manifest(folder, settings):
    """Record the settings that made the outputs in `folder`; written last, so it marks a complete folder."""
    with atomic_path(os.path.join(folder, MANIFEST)) as tmp, open(tmp, "w") as f:
        json.dump(settings, f, indent=1, sort_keys=True)


class WorkDirError(ValueError):
    """The work directory belongs to another run."""


def unwritable(folder, err, what="work_dir"):
    """The one-line error for a folder this run cannot write: read-only, not ours, or a full disk."""
    return ConfigError(f"{what} {folder} is not writable ({err.strerror or err}): free space or choose "
                       f"another --{what}")


class WorkDirLock:
    """`<work_dir>/run.lock`, flock-ed for the run's life, naming pid, host and start time (docs/errors.md).

    The kernel holds the lock, not the file: it drops it when the process ends however it ends, so a
    lock file left by a killed run is free to take, and of several runs starting at once exactly one gets
    it. A lock held by another process is a one-line error naming it; one held by this very process (an
    earlier run in it that raised) is taken over. `what` names the folder in errors: the training's
    work_dir or a data preparation's out_folder. As a context manager it releases the lock on exit.
    """

    NAME = "run.lock"
    held = {}  # absolute lock path -> this process's WorkDirLock on it

    def __init__(self, work_dir, what="work_dir"):
        self.path = os.path.join(work_dir, self.NAME)
        self.what = what
        self.fd = None
        previous = self.held.get(os.path.abspath(self.path))
        if previous is not None:
            previous.release()
        try:
            os.makedirs(work_dir, exist_ok=True)
            self.acquire(work_dir)
            me = dict(pid=os.getpid(), host=socket.gethostname(), start=time.strftime("%Y-%m-%d %H:%M:%S"))
            os.ftruncate(self.fd, 0)
            os.write(self.fd, json.dumps(me).encode())
        except OSError as err:  # a full or read-only disk: no empty lock stays behind
            self.release()
            raise unwritable(work_dir, err, what) from None
        self.held[os.path.abspath(self.path)] = self
        atexit.register(self.release)

    def acquire(self, work_dir):
        """flock the lock file; retried when the file we locked was removed by its releasing holder meanwhile."""
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self.in_use(work_dir) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return
            os.close(fd)
        raise WorkDirError(f"{self.what} {work_dir}: {self.path} keeps changing; another run is starting there")

    def holder(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def in_use(self, work_dir):
        """The error naming the live holder of the lock."""
        holder = self.holder()
        if holder is None:  # being written this instant
            return WorkDirError(f"{self.what} {work_dir} is locked by a run that is starting ({self.path})")
        return WorkDirError(f"{self.what} {work_dir} is in use by pid {holder.get('pid')} on {holder.get('host')} "
                            f"since {holder.get('start')}")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.release()

    def release(self):
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.remove(self.path)  # before unlocking: a run that opened it meanwhile sees the change and retries
        os.close(self.fd)
        self.fd = None
        if self.held.get(os.path.abspath(self.path)) is self:
            del self.held[os.path.abspath(self.path)]


CHECKPOINT_SUFFIX = ".pt"
RESULT_FILES = ("result.json", "knn.json", "scores.pkl")  # a finished evaluation's outputs


def finished_outputs(work_dir):
    """What makes `work_dir` another run's: its checkpoints and result files (not a log or a config alone)."""
    return sorted(n for n in os.listdir(work_dir) if not TMP_NAME.match(n)
                  and (n.endswith(CHECKPOINT_SUFFIX) or n in RESULT_FILES))


def claim_work_dir(work_dir, resume=None, overwrite=False):
    """Lock `work_dir` for this run (a WorkDirLock) and remove the temporaries of killed writers there.

    A checkpoint or result file there belongs to another run and is an error unless this run resumes a
    checkpoint of that directory or `overwrite` is set. Only those count: a run that failed before its
    first checkpoint leaves a log and a config, and its corrected rerun may use the folder.
    """
    lock = WorkDirLock(work_dir)
    remove_stale_temps(work_dir)
    others = finished_outputs(work_dir)
    own = bool(resume) and os.path.abspath(os.path.dirname(os.path.abspath(resume))) == os.path.abspath(work_dir)
    if others and not (own or overwrite):
        lock.release()
        raise WorkDirError(f"work_dir {work_dir} holds another run's files ({first_names(others)}): give a new "
                           "--work_dir, --resume a checkpoint in it, or --overwrite true")
    return lock


def claim_out_folder(out_folder, endings, overwrite=False):
    """Lock a data preparation's `out_folder` for this run with training's WorkDirLock, and remove the
    temporaries of killed writers in it.

    As for a work_dir, the folder belongs to another run when it, or a folder in it, holds a file whose name
    ends in one of `endings` (what this command writes): an error unless `overwrite`, so that a second run
    never silently replaces arrays a training may be reading.
    """
    lock = WorkDirLock(out_folder, what="out_folder")
    others = []
    for folder, dirs, files in os.walk(out_folder):
        dirs.sort()
        remove_stale_temps(folder)
        others += [os.path.relpath(os.path.join(folder, n), out_folder) for n in sorted(files) if n.endswith(endings)]
    if others and not overwrite:
        lock.release()
        raise WorkDirError(f"out_folder {out_folder} holds another run's arrays ({first_names(others)}): pass "
                           "--overwrite or choose another --out_folder")
    return lock


def first_names(names, shown=4):
    """The first `shown` of `names`, comma-separated, with ', ...' when there are more."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def open_work_dir(work_dir, resume, overwrite, main):
    """(lock, log, writer) of a run: rank 0 (`main`) claims `work_dir` before anything is written (it belongs to
    one run) and opens the log and TensorBoard; another rank logs nothing and holds no lock or writer."""
    lock = claim_work_dir(work_dir, resume, overwrite) if main else None
    log = Logger(work_dir, enabled=main)
    writer = None
    if main:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(os.path.join(work_dir, "tensorboard"))
    return lock, log, writer


def write_yaml(path, data):
    """`data` as YAML in `path`, atomically, keys in their order."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)
