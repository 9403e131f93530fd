"""The artifact store on an fsspec URL (object storage, a shared filesystem through fsspec).

Same layout and contract as :mod:`tasks.store`, at the URL::

    <url>/<stage>/<key>/...files...        uploaded one by one
    <url>/<stage>/<key>/manifest.json      uploaded LAST: its presence marks the artifact
    <url>/<stage>/.<key>.lock              best-effort lock (see :class:`RemoteLock`)

Object stores have no rename, so completeness is "the manifest exists and every file it lists
is there with the recorded size"; sha256 is checked when a file is downloaded. Writes go to a
local staging folder under ``cache_dir`` and become that machine's cache copy once uploaded.
Reads (:meth:`RemoteArtifactStore.path`) return ``<cache_dir>/<stage>/<key>/``, downloaded on
first use and verified against the manifest, so callers keep opening local files.

Locking: object stores have no flock. :class:`RemoteLock` is an exclusive-create lock file with
owner and heartbeat; two workers can still, rarely, both win it (a store without atomic
create-if-absent, or a stale lock broken by two waiters at once). That costs duplicate work,
never a wrong artifact (both write the same key; the manifest goes last). Duplicate work across
workers is prevented primarily by the sweep's idempotency keys: one flow run per point.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Iterator

from tasks.store import MANIFEST, ArtifactStore, _check_name
from tasks.store_files import LockTimeout, flock_file, pid_alive, scratch_path, sha256_file

_CHUNK = 1 << 20
LOCK_STALE_S = 120.0  # a lock whose heartbeat is older than this is broken


class ArtifactCorruptError(OSError):
    """A remote artifact's file is missing or does not match its manifest."""


def filesystem_for(url: str, what: str = "artifact store"):
    """``(fs, path)`` for an fsspec URL, with errors that name the URL and what to do."""
    import fsspec.core
    from fsspec.registry import known_implementations

    protocol = url.split("://", 1)[0]
    try:
        return fsspec.core.url_to_fs(url)
    except ValueError as e:
        if "Protocol not known" in str(e):
            raise ValueError(f"{what} URL {url!r}: unknown protocol {protocol!r} (fsspec knows "
                             f"e.g. file, local, memory, s3, gs, az, sftp)") from None
        raise
    except ImportError as e:
        impl = known_implementations.get(protocol, {}).get("class", "")
        package = impl.split(".", 1)[0] or "the fsspec implementation"
        raise ImportError(f"{what} URL {url!r}: protocol {protocol!r} needs the package "
                          f"{package!r}: pip install {package} (or pip install 'semprobe[cloud]') "
                          f"[{e}]") from None


class RemoteLock:
    """Best-effort exclusive lock: a lock file created exclusively (``xb``), holding owner and a
    heartbeat that a thread refreshes; broken when the heartbeat is older than ``stale_s`` or
    the owner is a dead process on this host."""

    def __init__(self, fs, path: str, stale_s: float = LOCK_STALE_S):
        self.fs, self.path, self.stale_s = fs, path, stale_s
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": secrets.token_hex(8)}
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _record(self) -> bytes:
        return json.dumps({**self.owner, "heartbeat": time.time()}).encode()

    def _read(self) -> dict | None:
        try:
            rec = json.loads(self.fs.cat_file(self.path))
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def live_heartbeat(self) -> float | None:
        """The last heartbeat of a live holder (another process's too), or None when the lock is
        free or its holder is stale."""
        rec = self._read()
        return None if rec is None or self._stale(rec) else float(rec.get("heartbeat", 0))

    def _ours(self) -> bool:
        rec = self._read()
        return rec is not None and rec.get("token") == self.owner["token"]

    def _stale(self, rec: dict) -> bool:
        if rec.get("host") == self.owner["host"] and isinstance(rec.get("pid"), int) \
                and not pid_alive(rec["pid"]):
            return True
        return time.time() - float(rec.get("heartbeat", 0)) > self.stale_s

    def _try_create(self) -> bool:
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(self._record())
        except FileExistsError:
            return False
        return self._ours()  # where "xb" is not atomic, the last writer owns it

    def acquire(self, timeout: float | None = None, poll_s: float = 0.5) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        parent = self.path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        while not self._try_create():
            rec = self._read()  # None: gone, or being written; either way look again
            if rec is not None and self._stale(rec) and self._read() == rec:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(self.path)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise LockTimeout(f"could not lock {self.path} within {timeout}s (held by {rec})")
            time.sleep(poll_s)
        self._beat = threading.Thread(target=self._heartbeat, name="semprobe-lock", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.stale_s / 4):
            with contextlib.suppress(OSError):
                if self._ours():
                    self.fs.pipe_file(self.path, self._record())

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        with contextlib.suppress(OSError):
            if self._ours():
                self.fs.rm_file(self.path)


class RemoteArtifactStore(ArtifactStore):
    """The artifact store at an fsspec URL; local copies under ``cache_dir`` (``self.root``)."""

    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        self.url = os.fspath(root).rstrip("/")
        self.fs, self.base = filesystem_for(self.url)
        self.base = self.base.rstrip("/")
        if cache_dir is None:
            cache_dir = Path(".semprobe") / "artifact-cache"
        self.root = Path(cache_dir).expanduser().absolute()

    def __repr__(self) -> str:
        return f"RemoteArtifactStore({self.url!r}, cache_dir={str(self.root)!r})"

    def _remote(self, stage: str, key: str, rel: str | None = None) -> str:
        folder = f"{self.base}/{_check_name('stage', stage)}/{_check_name('key', key)}"
        return folder if rel is None else f"{folder}/{rel}"

    def _where(self, stage: str, key: str) -> str:
        return f"artifact {stage}/{key} in {self.url}"

    # --------------------------------------------------------------- reading
    def _read_manifest(self, stage: str, key: str) -> dict | None:
        try:
            m = json.loads(self.fs.cat_file(self._remote(stage, key, MANIFEST)))
        except (OSError, ValueError):
            return None
        if not isinstance(m, dict) or not isinstance(m.get("files"), dict):
            return None
        return m

    def _remote_sizes(self, stage: str, key: str) -> dict[str, int]:
        folder = self._remote(stage, key)
        self.fs.invalidate_cache(folder)
        try:
            found = self.fs.find(folder, detail=True)
        except FileNotFoundError:
            return {}
        return {name[len(folder) + 1:]: info.get("size") for name, info in found.items()}

    def is_complete(self, stage: str, key: str, verify: bool | str = True) -> bool:
        """The manifest exists and every listed file has its size at the URL; with ``verify``
        True/"sha256" the local cache copy is also brought up to date and hashed (what a
        cached rerun reads). "stat" and False check sizes only (no mtimes on object stores)."""
        if verify not in (True, False, "sha256", "stat"):
            raise ValueError(f"verify must be True, False, 'sha256' or 'stat', not {verify!r}")
        m = self._read_manifest(stage, key)
        if m is None or m.get("key") != key or m.get("stage") != stage:
            return False
        sizes = self._remote_sizes(stage, key)
        for rel, info in m["files"].items():
            if ".." in PurePosixPath(rel).parts or rel.startswith("/") or sizes.get(rel) != info.get("size"):
                return False
        if verify in (True, "sha256"):
            try:
                self._fetch(stage, key, m, rehash=True)
            except OSError:
                return False
        return True

    def manifest(self, stage: str, key: str) -> dict:
        m = self._read_manifest(stage, key)
        if m is None:
            raise FileNotFoundError(f"no valid manifest for {self._where(stage, key)}")
        return m

    def path(self, stage: str, key: str) -> Path:
        """The local cache copy of a complete artifact, downloaded (and verified) if needed.
        FileNotFoundError when the URL holds no manifest for it; ArtifactCorruptError naming
        the file when a listed file is missing or does not match the manifest."""
        m = self._read_manifest(stage, key)
        if m is None:
            raise FileNotFoundError(f"{self._where(stage, key)} has no manifest.json (not written yet, "
                                    "or an upload was interrupted)")
        return self._fetch(stage, key, m, rehash=False)

    def exists(self, stage: str, key: str) -> bool:
        return bool(self.fs.exists(self._remote(stage, key)))

    def keys(self, stage: str) -> list[str]:
        folder = f"{self.base}/{_check_name('stage', stage)}"
        self.fs.invalidate_cache(folder)
        try:
            entries = self.fs.ls(folder, detail=True)
        except FileNotFoundError:
            return []
        names = (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")
        return sorted(n for n in names if not n.startswith("."))

    # ----------------------------------------------------------- local cache
    @staticmethod
    def _cache_matches(folder: Path, m: dict, rehash: bool) -> bool:
        try:
            if json.loads((folder / MANIFEST).read_text()) != m:
                return False
        except (OSError, ValueError):
            return False
        for rel, info in m["files"].items():
            p = folder / rel
            if not p.is_file() or p.stat().st_size != info.get("size"):
                return False
            if rehash and sha256_file(p) != info.get("sha256"):
                return False
        return True

    def _fetch(self, stage: str, key: str, m: dict, rehash: bool) -> Path:
        local = self.stage_dir(stage) / key
        if self._cache_matches(local, m, rehash):
            return local
        with flock_file(self.stage_dir(stage) / f".{key}.fetch.lock", what="another download"):
            if self._cache_matches(local, m, rehash):  # another thread or process fetched it
                return local
            tmp = scratch_path(local.parent, key, "tmp")
            tmp.mkdir(parents=True)
            try:
                for rel, info in m["files"].items():
                    self._download(stage, key, rel, info, tmp / rel)
                (tmp / MANIFEST).write_text(json.dumps(m, indent=1, sort_keys=True))
                self._swap_into_place(tmp, local)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return local

    def _download(self, stage: str, key: str, rel: str, info: dict, dest: Path) -> None:
        if ".." in PurePosixPath(rel).parts or rel.startswith("/"):
            raise ArtifactCorruptError(f"{self._where(stage, key)}: manifest lists unsafe path {rel!r}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        h, size = hashlib.sha256(), 0
        try:
            with self.fs.open(self._remote(stage, key, rel), "rb") as src, open(dest, "wb") as out:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
        except FileNotFoundError:
            raise ArtifactCorruptError(f"{self._where(stage, key)}: file {rel!r} is missing "
                                       "(listed in manifest.json); the stage will recompute it") from None
        if size != info.get("size") or h.hexdigest() != info.get("sha256"):
            raise ArtifactCorruptError(
                f"{self._where(stage, key)}: file {rel!r} does not match manifest.json (size {size} "
                f"vs {info.get('size')}, sha256 {h.hexdigest()[:12]} vs {str(info.get('sha256'))[:12]})")

    # --------------------------------------------------------------- writing
    @contextlib.contextmanager
    def write(self, stage: str, key: str, meta: dict | None = None) -> Iterator[Path]:
        """Yield a local staging folder; on clean exit build the manifest, upload every file,
        then the manifest, and keep the folder as this machine's cache copy."""
        local = self.stage_dir(stage) / _check_name("key", key)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = scratch_path(local.parent, key, "tmp")
        tmp.mkdir()
        try:
            yield tmp
            manifest = self._build_manifest(tmp, stage, key, meta)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            self._upload(stage, key, tmp, manifest)
            self._swap_into_place(tmp, local)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _upload(self, stage: str, key: str, tmp: Path, manifest: dict) -> None:
        folder = self._remote(stage, key)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(f"{folder}/{MANIFEST}")  # a previous artifact stops being complete first
        made = set()
        for rel in manifest["files"]:
            parent = f"{folder}/{rel}".rsplit("/", 1)[0]
            if parent not in made:
                self.fs.makedirs(parent, exist_ok=True)
                made.add(parent)
            self.fs.put_file(str(tmp / rel), f"{folder}/{rel}")
        for rel in set(self._remote_sizes(stage, key)) - set(manifest["files"]):
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(f"{folder}/{rel}")  # left by an earlier artifact of this key
        self.fs.put_file(str(tmp / MANIFEST), f"{folder}/{MANIFEST}")
        self.fs.invalidate_cache(folder)

    def delete(self, stage: str, key: str) -> bool:
        folder, removed = self._remote(stage, key), False
        if self.fs.exists(folder):
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(f"{folder}/{MANIFEST}")
            self.fs.rm(folder, recursive=True)
            self.fs.invalidate_cache(folder)
            removed = True
        local = self.stage_dir(stage) / key
        if local.exists():
            aside = scratch_path(local.parent, key, "old")
            os.rename(local, aside)
            shutil.rmtree(aside, ignore_errors=True)
        return removed

    # clean_stale (inherited) cleans the local staging and cache folders under ``self.root``.
    # An interrupted upload leaves files without a manifest at the URL: never complete, and
    # overwritten by the next write of that key.

    # --------------------------------------------------------------- locking
    def _remote_lock(self, stage: str, key: str, stale_s: float = LOCK_STALE_S) -> RemoteLock:
        return RemoteLock(self.fs, f"{self.base}/{_check_name('stage', stage)}/.{_check_name('key', key)}.lock",
                          stale_s)

    @contextlib.contextmanager
    def lock(self, stage: str, key: str, timeout: float | None = None, poll_s: float = 0.5,
             stale_s: float = LOCK_STALE_S) -> Iterator[str]:
        """Best-effort cross-worker lock on ``<url>/<stage>/.<key>.lock`` (see module doc)."""
        lk = self._remote_lock(stage, key, stale_s)
        lk.acquire(timeout, poll_s)
        try:
            yield lk.path
        finally:
            lk.release()

    def computing_since(self, stage: str, key: str) -> float | None:
        """The last heartbeat of a live holder of the key's lock (a remote lock keeps no start
        time), or None when none holds it or its holder is stale."""
        return self._remote_lock(stage, key).live_heartbeat()
