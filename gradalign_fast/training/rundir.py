"""A run directory: checked before any work, held by one process at a time, and reusable when
its run stopped before the first checkpoint.

The lock is an advisory `fcntl.flock` on OUT/.lock, which the kernel releases when the holding
process ends in any way (exit, exception, SIGINT, kill -9), so a crashed run never leaves a
directory locked.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import warnings
from pathlib import Path

LOCK_FILE = ".lock"
# Every file of a run directory: a new run refuses a directory holding one of them, unless the
# run stopped before its first checkpoint (see stale_files).
RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "best.pt", "final.json")
# What a run writes before its first checkpoint (snapshots: a folder).
EARLY_FILES = ("config.json", "metrics.jsonl", "best.pt", "snapshots")


def check_writable(out: Path) -> None:
    """ValueError, before any work, unless `out` is (or can be made) a writable directory."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {out} is a file; choose a directory (it is "
                         f"created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output directory {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to the output directory {out} (permission denied)")


def check_output_file(path) -> Path:
    """ValueError, before any work, unless a file can be written at `path` (its folder exists
    and is writable, and `path` is not a directory)."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"--out {path} is a directory; name a file (e.g. {path}/eval.json)")
    if not folder.is_dir():
        raise ValueError(f"--out {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: cannot write in {folder} (permission denied)")
    return path


@contextlib.contextmanager
def locked(out: Path):
    """Holds OUT/.lock for the duration, removed on release; ValueError naming the holder
    if another process has it."""
    path = out / LOCK_FILE
    while True:
        lock = open(path, "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            lock.close()
            raise ValueError(f"{out} is in use by another training process (pid {holder}; "
                             f"lock {path}): wait for it to finish, or choose another output "
                             f"directory") from None
        # the holder before us may have removed the file between our open and our lock:
        # then we hold a lock on a file nobody else will open; take the new one
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(lock.fileno()).st_ino == os.stat(path).st_ino:
                break
        lock.close()
    try:
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: no one can take a stale file
        lock.close()  # releases the lock


def stale_files(out: Path) -> list[str]:
    """The files of a run that stopped before its first checkpoint (no checkpoint.pt and no
    final.json), [] otherwise."""
    if (out / "checkpoint.pt").exists() or (out / "final.json").exists():
        return []
    return [f for f in EARLY_FILES if (out / f).exists()]


def clear_stale(out: Path, files: list[str]) -> None:
    """Removes a stale run's files (stale_files) with a warning saying so: nothing it wrote
    can be resumed, so the directory starts afresh."""
    warnings.warn(f"{out} holds a run that stopped before its first checkpoint "
                  f"({', '.join(files)}): nothing to resume, starting it afresh", stacklevel=3)
    for f in files:
        p = out / f
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
