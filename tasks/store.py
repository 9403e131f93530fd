"""Artifact store: one folder per (stage, key), written atomically, verified by sha256.

Layout under ``root``::

    <root>/<stage>/<key>/                  a complete artifact (files + manifest.json)
    <root>/<stage>/.<key>.tmp-<pid>-<host><rand>/ a write in progress (never looks complete)
    <root>/<stage>/.<key>.lock             the per-key lock file (fcntl.flock)

Completeness is decided by the data, not by any cache: an artifact is complete only when its
``manifest.json`` exists and every file it lists exists with the recorded size and sha256.

Typical use (what :meth:`ArtifactStore.ensure` does)::

    if store.is_complete(stage, key): return store.manifest(stage, key)
    with store.lock(stage, key):
        if store.is_complete(stage, key): return store.manifest(stage, key)  # another process won
        with store.write(stage, key, meta={...}) as tmp:
            ... write files under tmp ...
    return store.manifest(stage, key)

``root`` is a path, a ``file://`` URL or any other fsspec URL. Paths and ``file://`` URLs are
the local store above (an NFS mount works as a local path as long as it supports flock; Linux
NFSv4 does). Any other protocol (``s3://``, ``gs://``, ``memory://``, ``local://``...) gives a
:class:`tasks.remote_store.RemoteArtifactStore`: the same layout at the URL, written through a
local staging folder and read through a verified local cache copy (see that module).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from tasks.store_files import (HOST_TAG, SCRATCH_NAME, LockTimeout, flock_file, fsync_dir, pid_alive, scratch_path,
                               sha256_file)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+-]{0,199}$")


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ValueError(
            f"invalid {kind} {name!r}: use letters, digits and _.=+- "
            f"(not starting with '.', no '..', at most 200 characters)"
        )
    return name


def is_remote_url(url: str | os.PathLike) -> bool:
    """True for a URL with a protocol other than ``file`` (``s3://``, ``memory://``, ...)."""
    s = os.fspath(url)
    return "://" in s and not s.startswith("file://")


class ArtifactStore:
    """Artifact store rooted at ``root``: a path or ``file://`` URL is this local store; any
    other fsspec URL constructs a :class:`tasks.remote_store.RemoteArtifactStore` whose local
    copies live under ``cache_dir`` (ignored by the local store)."""

    def __new__(cls, root: str | os.PathLike = "", cache_dir: str | os.PathLike | None = None):
        if cls is ArtifactStore and is_remote_url(root):
            from tasks.remote_store import RemoteArtifactStore

            return super().__new__(RemoteArtifactStore)
        return super().__new__(cls)

    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        root_s = os.fspath(root)
        if root_s.startswith("file://"):
            root_s = root_s[len("file://"):]
        self.root = Path(root_s).expanduser().absolute()

    def __repr__(self) -> str:
        return f"ArtifactStore({str(self.root)!r})"

    # ------------------------------------------------------------------ paths
    def stage_dir(self, stage: str) -> Path:
        return self.root / _check_name("stage", stage)

    def path(self, stage: str, key: str) -> Path:
        """Final folder of an artifact: ``<root>/<stage>/<key>/`` (may not exist)."""
        return self.stage_dir(stage) / _check_name("key", key)

    def _lock_path(self, stage: str, key: str) -> Path:
        return self.stage_dir(stage) / f".{_check_name('key', key)}.lock"

    # --------------------------------------------------------------- reading
    def _read_manifest(self, stage: str, key: str) -> dict | None:
        try:
            with open(self.path(stage, key) / MANIFEST, "r", encoding="utf-8") as f:
                m = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(m, dict) or not isinstance(m.get("files"), dict):
            return None
        return m

    def is_complete(self, stage: str, key: str, verify: bool | str = True) -> bool:
        """True when the folder, its manifest and every listed file (size + sha256) check out.

        ``verify``: True / "sha256" hashes every file (the default; what a cached rerun must
        trust); "stat" hashes only files whose size or mtime differ from the manifest (like
        git's index: catches rewrites, but misses silent bit rot and a same-size rewrite within
        the filesystem's mtime granularity); False checks sizes only.
        """
        if verify not in (True, False, "sha256", "stat"):
            raise ValueError(f"verify must be True, False, 'sha256' or 'stat', not {verify!r}")
        folder = self.path(stage, key)
        m = self._read_manifest(stage, key)
        if m is None or m.get("key") != key or m.get("stage") != stage:
            return False
        for rel, info in m["files"].items():
            p = folder / rel
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                return False
            try:
                st = p.stat()
            except OSError:
                return False
            if not p.is_file() or st.st_size != info.get("size"):
                return False
            if verify == "stat" and st.st_mtime_ns == info.get("mtime_ns"):
                continue
            if verify and sha256_file(p) != info.get("sha256"):
                return False
        return True

    def manifest(self, stage: str, key: str) -> dict:
        """The manifest of an artifact; FileNotFoundError if it has none (or it is unreadable)."""
        m = self._read_manifest(stage, key)
        if m is None:
            raise FileNotFoundError(f"no valid manifest for artifact {stage}/{key} under {self.root}")
        return m

    def exists(self, stage: str, key: str) -> bool:
        """Whether anything is stored under the key (complete or not)."""
        return self.path(stage, key).exists()

    def computing_since(self, stage: str, key: str) -> float | None:
        """When the process now computing the key took its lock (epoch seconds: the lock file's
        mtime, which ``flock_file`` rewrites on taking it), or None when no process holds it."""
        try:
            fd = os.open(self._lock_path(stage, key), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return os.fstat(fd).st_mtime
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def keys(self, stage: str) -> list[str]:
        """Keys that have a folder in ``stage`` (complete or not), sorted."""
        d = self.stage_dir(stage)
        if not d.is_dir():
            return []
        return sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))

    # --------------------------------------------------------------- writing
    @contextlib.contextmanager
    def write(self, stage: str, key: str, meta: dict | None = None) -> Iterator[Path]:
        """Yield a temporary folder to write the artifact's files into.

        On clean exit: write ``manifest.json`` (key, stage, files with sha256 and size, ``meta``)
        and rename the folder into place atomically, replacing any previous folder of that key.
        ``meta`` is read at exit, so the caller may fill the dict inside the ``with`` block.
        It must be JSON-serialisable. On an exception: delete the temporary folder and leave any
        previous artifact untouched.
        """
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = scratch_path(final.parent, key, "tmp")
        tmp.mkdir()
        try:
            yield tmp
            manifest = self._build_manifest(tmp, stage, key, meta)
            mpath = tmp / MANIFEST
            with open(mpath, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(tmp)
            self._swap_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _build_manifest(tmp: Path, stage: str, key: str, meta: dict | None) -> dict:
        files: dict[str, dict[str, Any]] = {}
        for dirpath, dirnames, filenames in os.walk(tmp):
            dirnames.sort()
            for name in sorted(filenames):
                p = Path(dirpath) / name
                rel = p.relative_to(tmp).as_posix()
                if rel == MANIFEST:
                    continue
                if p.is_symlink():
                    raise ValueError(f"artifact {stage}/{key}: symlinks are not allowed ({rel})")
                st = p.stat()
                files[rel] = {"sha256": sha256_file(p), "size": st.st_size,
                              "mtime_ns": st.st_mtime_ns}
        return {
            "version": MANIFEST_VERSION,
            "stage": stage,
            "key": key,
            "files": files,
            "meta": json.loads(json.dumps(meta or {})),  # fail early if not JSON-serialisable
            "created_at": time.time(),
        }

    @staticmethod
    def _swap_into_place(tmp: Path, final: Path) -> None:
        try:
            os.rename(tmp, final)  # atomic when final does not exist
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                raise
            # A previous (incomplete, corrupt or stale) folder is in the way: move it aside,
            # move ours in, then delete the old one. Readers never see a half-written folder.
            old = scratch_path(final.parent, final.name, "old")
            os.rename(final, old)
            os.rename(tmp, final)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        fsync_dir(final.parent)

    def delete(self, stage: str, key: str) -> bool:
        """Remove an artifact folder; True if something was removed."""
        p = self.path(stage, key)
        if not p.exists():
            return False
        aside = scratch_path(p.parent, key, "old")
        os.rename(p, aside)  # so the key disappears atomically
        shutil.rmtree(aside, ignore_errors=True)
        return True

    def clean_stale(self, stage: str | None = None, max_age_s: float | None = 24 * 3600) -> list[Path]:
        """Delete temporary/aside folders left by killed writers.

        A folder is removed when its writer (pid and host tag, from the name) ran on this host
        (this pid namespace) and is no longer alive, or when it is older than ``max_age_s`` (None: never by age; for
        writers on other hosts sharing the store). A name without a host tag (written before
        the tags) counts as this host's. By age or by an untagged name, never while a process, on
        any host, holds its key's lock (``computing_since``): a stage computing for days, or another
        host's writer named before the tags, keeps its folder.
        """
        stages = [self.stage_dir(stage)] if stage else [p for p in self.root.glob("*") if p.is_dir()]
        removed = []
        now = time.time()
        for sd in stages:
            if not sd.is_dir():
                continue
            for p in sd.iterdir():
                mt = SCRATCH_NAME.match(p.name)
                if not mt:
                    continue
                tag = mt["tag"]
                legacy, mine = len(tag) == 8, tag[:8] == HOST_TAG
                try:
                    age = now - p.stat().st_mtime
                except OSError:
                    continue
                dead = (legacy or mine) and not pid_alive(int(mt["pid"]))
                # a dead writer tagged by this host is garbage whoever holds the key now (a new
                # writer has its own folder); by age or by an untagged name, only if none does
                if (mine and dead) or ((legacy and dead or max_age_s is not None and age > max_age_s)
                                       and not self._held(sd.name, mt["key"])):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p)
        return removed

    def _held(self, stage: str, key: str) -> bool:
        """Whether a process holds the lock of ``key``: False for a name no key can have, True
        when the lock cannot be read (a remote store out of reach keeps the folder)."""
        try:
            return self.computing_since(stage, key) is not None
        except ValueError:
            return False
        except Exception:
            return True

    # --------------------------------------------------------------- locking
    @contextlib.contextmanager
    def lock(self, stage: str, key: str, timeout: float | None = None,
             poll_s: float = 0.05) -> Iterator[Path]:
        """Exclusive OS lock (fcntl.flock) on ``<root>/<stage>/.<key>.lock``.

        Works across processes and across threads (each call opens its own file description).
        ``timeout=None`` waits forever; otherwise LockTimeout after ``timeout`` seconds.
        The lock is released when the block exits or the process dies; the lock file is kept
        (deleting it would let two processes lock two different inodes).
        """
        with flock_file(self._lock_path(stage, key), timeout, poll_s) as lp:
            yield lp

    # -------------------------------------------------------------- compound
    def ensure(self, stage: str, key: str, compute: Callable[[Path], dict | None],
               verify: bool | str = True, lock_timeout: float | None = None) -> tuple[dict, bool]:
        """Return ``(manifest, computed)``, computing the artifact at most once across processes.

        ``compute(tmp_dir)`` writes the files into ``tmp_dir`` and may return a ``meta`` dict.
        ``computed`` is False when a complete artifact already existed (or another process
        finished it while we waited for the lock).
        """
        if self.is_complete(stage, key, verify=verify):
            return self.manifest(stage, key), False
        with self.lock(stage, key, timeout=lock_timeout):
            if self.is_complete(stage, key, verify=verify):
                return self.manifest(stage, key), False
            meta: dict = {}
            with self.write(stage, key, meta=meta) as tmp:
                extra = compute(tmp)
                if extra:
                    meta.update(extra)
        return self.manifest(stage, key), True
