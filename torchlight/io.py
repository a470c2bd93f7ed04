"""File helpers without torch: atomic outputs, a run logger, work-directory locks, checked reads, manifests."""
import atexit
import codecs
import contextlib
import json
import os
import pickle
import re
import socket
import sys
import time

import numpy as np

from .config import ConfigError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    An interrupted or failing writer therefore never leaves a file that looks finished.
    The temporary name keeps the extension so numpy/torch writers do not append another.
    """
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
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
TMP_NAME = re.compile(r"\.tmp(\d+)(\.[^.]*)?$")


def remove_stale_temps(folder):
    """Delete `atomic_path` temporaries in `folder` whose writer is gone (killed runs); returns their names."""
    removed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        match = TMP_NAME.search(name)
        if match and not pid_alive(int(match.group(1))):
            os.remove(os.path.join(folder, name))
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


class WorkDirLock:
    """`<work_dir>/run.lock` naming pid, host and start time while a run writes there (README: work directories).

    Created exclusively, so of two runs starting at once one fails. A lock left by a process that no longer
    runs on this host, or by this very process (an earlier run in it that raised), is taken over; any other
    holder is a one-line error naming it.
    """

    NAME = "run.lock"

    def __init__(self, work_dir):
        self.path = os.path.join(work_dir, self.NAME)
        os.makedirs(work_dir, exist_ok=True)
        me = dict(pid=os.getpid(), host=socket.gethostname(), start=time.strftime("%Y-%m-%d %H:%M:%S"))
        for _ in range(2):  # the second try follows the removal of a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self.check_stale(work_dir)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            atexit.register(self.release)
            return
        raise WorkDirError(f"work_dir {work_dir}: another run took {self.path} at the same moment")

    def holder(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def check_stale(self, work_dir):
        """Return if the existing lock's holder is gone (or is this process); else the error naming it."""
        holder = self.holder()
        if holder is None:  # being written this instant, or damaged
            raise WorkDirError(f"work_dir {work_dir} is locked by {self.path}, which cannot be read "
                               "(remove it if no run uses this directory)")
        if holder.get("host") == socket.gethostname() and (holder.get("pid") == os.getpid()
                                                         or not pid_alive(holder.get("pid", -1))):
            return
        raise WorkDirError(f"work_dir {work_dir} is in use by pid {holder.get('pid')} on {holder.get('host')} since "
                           f"{holder.get('start')} (remove {self.path} if that run is gone)")

    def release(self):
        holder = self.holder()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)


def claim_work_dir(work_dir, resume=None, overwrite=False):
    """Lock `work_dir` for this run (a WorkDirLock). A `config.yaml` or checkpoint there belongs to another
    run and is an error unless this run resumes a checkpoint of that directory or `overwrite` is set.

    Only those count: a start that failed before writing its config leaves a log, not a run.
    """
    lock = WorkDirLock(work_dir)
    others = sorted(n for n in os.listdir(work_dir) if n == "config.yaml" or n.endswith(".pt"))
    own = bool(resume) and os.path.abspath(os.path.dirname(os.path.abspath(resume))) == os.path.abspath(work_dir)
    if others and not (own or overwrite):
        lock.release()
        raise WorkDirError(f"work_dir {work_dir} holds another run's files ({', '.join(others[:4])}"
                           f"{', ...' if len(others) > 4 else ''}): give a new --work_dir, --resume a checkpoint "
                           "in it, or --overwrite true")
    return lock
