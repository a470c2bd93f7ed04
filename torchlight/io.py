"""File helpers without torch: atomic outputs and a small run logger."""
import contextlib
import os
import sys
import time


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
