"""The artifact stores' file primitives: sha256 of a file, an exclusive ``fcntl.flock`` on a lock
file, fsync of a folder, and scratch names beside an artifact tagged with the writer's pid and
pid space (``HOST_TAG``), so that a store shared by several machines or containers judges only
its own writers by pid (``tasks.store``, ``tasks.remote_store``)."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Iterator

_CHUNK = 1 << 20


class LockTimeout(TimeoutError):
    """Raised when ``store.lock(..., timeout=...)`` cannot get the lock in time."""


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pid_space() -> str:
    """The host name and pid namespace, within which a pid names one process: two containers may
    share a host name (``--network host``) and a volume while numbering their processes apart."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return f"{socket.gethostname()}/{ns}"


# 8 hex digits naming this pid space in scratch folder names, so that a store shared by several
# machines (or containers) never judges another one's writer by a pid of this one.
HOST_TAG = hashlib.sha256(pid_space().encode()).hexdigest()[:8]
SCRATCH_NAME = re.compile(r"^\.(?P<key>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-(?P<tag>[0-9a-f]+)$")


def scratch_path(folder: Path, name: str, kind: str) -> Path:
    """A scratch path beside ``folder/name``: ``.<name>.<kind>-<pid>-<host tag><random>``."""
    return folder / f".{name}.{kind}-{os.getpid()}-{HOST_TAG}{secrets.token_hex(4)}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def flock_file(path: Path, timeout: float | None = None, poll_s: float = 0.05,
               what: str = "another process is computing this artifact") -> Iterator[Path]:
    """Exclusive fcntl.flock on ``path`` (created if missing, never deleted: deleting it would
    let two processes lock two different inodes). Released when the block exits or the process
    dies; each call opens its own file description, so it also excludes threads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(f"could not lock {path} within {timeout}s ({what})") from None
                    time.sleep(poll_s)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        yield path
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
