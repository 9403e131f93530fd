"""The artifact store on fsspec URLs: fsspec's real in-memory filesystem (``memory://``, shared by
every store in the process, like a bucket every worker sees) and real files through fsspec's
``local://`` protocol (which takes the remote code path, so exclusive create is a real O_EXCL)."""

import importlib.util
import json
import os
import socket
import threading
import time
import uuid

import fsspec
import pytest

from tasks.remote_store import ArtifactCorruptError, RemoteArtifactStore, RemoteLock
from tasks.result_storage import BLOCK_SLUG, result_settings
from tasks.store import ArtifactStore
from tasks.store_files import LockTimeout
from tasks.workspace import Workspace


@pytest.fixture
def url():
    u = f"memory://semprobe-test-{uuid.uuid4().hex}/artifacts"
    yield u
    fs = fsspec.filesystem("memory")
    if fs.exists(u):
        fs.rm(u, recursive=True)


def _write(store, stage, key, files, meta=None):
    with store.write(stage, key, meta=meta) as tmp:
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)


def _put(name, data):
    """A stage's compute: write one file, return no meta."""
    return lambda tmp: (tmp / name).write_bytes(data) and None


def _remote(url, *parts):
    return "/".join([url.split("://", 1)[1], *parts]).replace("//", "/")


def test_round_trip_writes_to_the_url_and_reads_a_local_copy(url, tmp_path):
    s = ArtifactStore(url, cache_dir=tmp_path / "cache")
    assert isinstance(s, RemoteArtifactStore)
    assert not s.is_complete("data", "k1") and not s.exists("data", "k1")
    _write(s, "data", "k1", {"a.bin": b"hello", "sub/b.txt": b"world"}, meta={"rows": 2})
    fs = fsspec.filesystem("memory")
    assert fs.cat_file(_remote(url, "data/k1/sub/b.txt")) == b"world"
    assert set(json.loads(fs.cat_file(_remote(url, "data/k1/manifest.json")))["files"]) == {"a.bin", "sub/b.txt"}
    assert s.is_complete("data", "k1") and s.exists("data", "k1")
    assert s.keys("data") == ["k1"] and s.keys("nothing") == []
    assert s.manifest("data", "k1")["meta"] == {"rows": 2}
    local = s.path("data", "k1")
    assert local == tmp_path / "cache" / "data" / "k1"
    assert (local / "a.bin").read_bytes() == b"hello"
    assert sorted(p.name for p in (tmp_path / "cache" / "data").iterdir() if not p.name.endswith(".lock")) == ["k1"]


def test_a_second_worker_with_an_empty_cache_sees_the_artifact(url, tmp_path):
    first = ArtifactStore(url, cache_dir=tmp_path / "worker1")
    first.ensure("train", "k", _put("model.pt", b"\x00" * 3000))
    second = ArtifactStore(url, cache_dir=tmp_path / "worker2")
    assert not (tmp_path / "worker2").exists()
    manifest, computed = second.ensure("train", "k", lambda tmp: pytest.fail("recomputed"))
    assert computed is False and manifest == first.manifest("train", "k")
    assert (second.path("train", "k") / "model.pt").read_bytes() == b"\x00" * 3000
    assert second.path("train", "k").parent.parent == tmp_path / "worker2"


def test_interrupted_upload_without_manifest_is_not_complete(url, tmp_path):
    s = ArtifactStore(url, cache_dir=tmp_path / "c1")
    real_put = s.fs.put_file

    def put_then_die_before_manifest(lpath, rpath, **kw):
        if rpath.endswith("manifest.json"):
            raise ConnectionError("network lost")  # the worker dies between data and manifest
        return real_put(lpath, rpath, **kw)

    s.fs.put_file = put_then_die_before_manifest
    try:
        with pytest.raises(ConnectionError):
            _write(s, "act", "k", {"x.npy": b"0123456789"})
    finally:
        s.fs.put_file = real_put
    fs = fsspec.filesystem("memory")
    assert fs.exists(_remote(url, "act/k/x.npy"))  # the data went up first...
    other = ArtifactStore(url, cache_dir=tmp_path / "c2")
    assert other.exists("act", "k")
    for verify in (True, "stat", False):  # ...but without its manifest it is not an artifact
        assert not other.is_complete("act", "k", verify=verify)
    with pytest.raises(FileNotFoundError, match="act/k"):
        other.path("act", "k")
    assert not list((tmp_path / "c1" / "act").glob(".k.tmp-*"))  # staging cleaned up
    assert other.ensure("act", "k", _put("x.npy", b"recomputed"))[1] is True
    assert (ArtifactStore(url, cache_dir=tmp_path / "c3").path("act", "k") / "x.npy").read_bytes() == b"recomputed"


def test_tampered_remote_file_is_detected_on_download(url, tmp_path):
    _write(ArtifactStore(url, cache_dir=tmp_path / "c1"), "probes", "k", {"r.parquet": b"0123456789"})
    fsspec.filesystem("memory").pipe_file(_remote(url, "probes/k/r.parquet"), b"0123456780")  # same size
    s = ArtifactStore(url, cache_dir=tmp_path / "c2")
    assert s.is_complete("probes", "k", verify=False)  # sizes alone cannot see it
    assert not s.is_complete("probes", "k")  # sha256 on download does
    with pytest.raises(ArtifactCorruptError, match=r"probes/k .*'r\.parquet' does not match"):
        s.path("probes", "k")
    assert not (tmp_path / "c2" / "probes" / "k").exists()  # nothing half-verified in the cache
    assert s.ensure("probes", "k", _put("r.parquet", b"fresh"))[1] is True
    assert s.is_complete("probes", "k")


def test_missing_remote_file_names_the_file(url, tmp_path):
    _write(ArtifactStore(url, cache_dir=tmp_path / "c1"), "act", "k", {"x.npy": b"12", "y.npy": b"34"})
    fsspec.filesystem("memory").rm_file(_remote(url, "act/k/y.npy"))
    s = ArtifactStore(url, cache_dir=tmp_path / "c2")
    assert not s.is_complete("act", "k", verify=False)
    with pytest.raises(ArtifactCorruptError, match=r"act/k .*'y\.npy' is missing"):
        s.path("act", "k")


def test_corrupt_local_cache_copy_is_downloaded_again(url, tmp_path):
    s = ArtifactStore(url, cache_dir=tmp_path / "c")
    _write(s, "data", "k", {"f": b"good"})
    (s.path("data", "k") / "f").write_bytes(b"evil")
    assert s.is_complete("data", "k")  # the URL is the truth; the cache copy is healed
    assert (s.path("data", "k") / "f").read_bytes() == b"good"


def test_rewrite_and_delete(url, tmp_path):
    s = ArtifactStore(url, cache_dir=tmp_path / "c")
    _write(s, "data", "k", {"f": b"v1", "stale": b"old"})
    _write(s, "data", "k", {"f": b"v2"})
    fs = fsspec.filesystem("memory")
    assert sorted(p.rsplit("/", 1)[1] for p in fs.find(_remote(url, "data/k"))) == ["f", "manifest.json"]
    assert (ArtifactStore(url, cache_dir=tmp_path / "c2").path("data", "k") / "f").read_bytes() == b"v2"
    assert s.delete("data", "k") and not s.exists("data", "k") and not (tmp_path / "c" / "data" / "k").exists()
    assert s.delete("data", "k") is False


def test_bad_protocol_and_missing_package(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"'nosuchfs://b/x'.*unknown protocol 'nosuchfs'"):
        ArtifactStore("nosuchfs://b/x")
    monkeypatch.setenv("SEMPROBE_ARTIFACTS", "nosuchfs://b/x")
    with pytest.raises(ValueError, match="nosuchfs"):
        Workspace.at(tmp_path).store
    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed: s3:// URLs work")
    with pytest.raises(ImportError, match=r"'s3://bucket/x'.*needs the package 's3fs': pip install s3fs"):
        ArtifactStore("s3://bucket/x")


def test_workspace_setting(tmp_path, monkeypatch, url):
    monkeypatch.delenv("SEMPROBE_ARTIFACTS", raising=False)
    monkeypatch.delenv("SEMPROBE_ARTIFACT_CACHE", raising=False)
    ws = Workspace.at(tmp_path)
    assert type(ws.store) is ArtifactStore and ws.store.root == tmp_path / "artifacts"
    monkeypatch.setenv("SEMPROBE_ARTIFACTS", url)
    assert isinstance(ws.store, RemoteArtifactStore) and ws.store.root == tmp_path / "artifact-cache"
    monkeypatch.setenv("SEMPROBE_ARTIFACT_CACHE", str(tmp_path / "elsewhere"))
    assert ws.store.root == tmp_path / "elsewhere"
    monkeypatch.setenv("SEMPROBE_ARTIFACTS", f"file://{tmp_path}/shared")
    assert type(ws.store) is ArtifactStore and ws.store.root == tmp_path / "shared"


# ------------------------------------------------------------------ locks (real files via local://)
def test_local_protocol_takes_the_remote_path(tmp_path):
    s = ArtifactStore(f"local://{tmp_path}/bucket", cache_dir=tmp_path / "cache")
    assert isinstance(s, RemoteArtifactStore)
    _write(s, "data", "k", {"f": b"x"})
    assert (tmp_path / "bucket" / "data" / "k" / "manifest.json").is_file()
    assert s.keys("data") == ["k"]


def test_remote_lock_excludes_times_out_and_releases(tmp_path):
    s = ArtifactStore(f"local://{tmp_path}/bucket", cache_dir=tmp_path / "cache")
    lock_file = tmp_path / "bucket" / "data" / ".k.lock"
    with s.lock("data", "k"):
        owner = json.loads(lock_file.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        with pytest.raises(LockTimeout, match="held by"):
            with s.lock("data", "k", timeout=0.3, poll_s=0.05):
                pass
        with s.lock("data", "other", timeout=0.3):  # other keys are independent
            pass
        assert s.computing_since("data", "k") is not None and s.computing_since("data", "other") is None
    assert not lock_file.exists() and s.computing_since("data", "k") is None


@pytest.mark.parametrize("holder", ["dead_pid_here", "old_heartbeat"])
def test_stale_remote_lock_is_broken(tmp_path, holder):
    s = ArtifactStore(f"local://{tmp_path}/bucket", cache_dir=tmp_path / "cache")
    lock_file = tmp_path / "bucket" / "data" / ".k.lock"
    lock_file.parent.mkdir(parents=True)
    rec = {"host": socket.gethostname(), "pid": 999999999, "token": "x", "heartbeat": time.time()} \
        if holder == "dead_pid_here" else {"host": "elsewhere", "pid": 1, "token": "x", "heartbeat": time.time() - 600}
    lock_file.write_text(json.dumps(rec))
    with s.lock("data", "k", timeout=2, poll_s=0.05):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock_file.write_text(json.dumps(rec))
    assert s.computing_since("data", "k") is None  # a stale holder computes nothing
    live = {"host": "elsewhere", "pid": 1, "token": "y", "heartbeat": time.time()}
    lock_file.write_text(json.dumps(live))
    assert s.computing_since("data", "k") == pytest.approx(live["heartbeat"])
    with pytest.raises(LockTimeout):
        with s.lock("data", "k", timeout=0.2, poll_s=0.05):
            pass


def test_heartbeat_keeps_a_long_hold_fresh(tmp_path):
    fs = fsspec.filesystem("local")
    lk = RemoteLock(fs, f"{tmp_path}/.k.lock", stale_s=0.4)
    lk.acquire(timeout=1)
    try:
        first = json.loads((tmp_path / ".k.lock").read_text())["heartbeat"]
        time.sleep(0.6)  # longer than stale_s: without the heartbeat another worker would break it
        assert json.loads((tmp_path / ".k.lock").read_text())["heartbeat"] > first
        with pytest.raises(LockTimeout):
            RemoteLock(fs, f"{tmp_path}/.k.lock", stale_s=0.4).acquire(timeout=0.2, poll_s=0.05)
    finally:
        lk.release()
    assert not (tmp_path / ".k.lock").exists()


def test_two_workers_compute_once(tmp_path):
    url, counter = f"local://{tmp_path}/bucket", []

    def worker(cache):
        def compute(tmp):
            counter.append(cache)
            time.sleep(0.3)  # the other worker is now waiting on the lock
            (tmp / "out.txt").write_text("result")

        ArtifactStore(url, cache_dir=tmp_path / cache).ensure("train", "same", compute)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert len(counter) == 1
    for i in range(2):
        assert (ArtifactStore(url, cache_dir=tmp_path / f"w{i}").path("train", "same") / "out.txt").read_text() == "result"


# ------------------------------------------------------------------ Prefect result storage
def test_result_settings(tmp_path):
    assert result_settings(None) == {} and result_settings("") == {}  # default: nothing persisted
    assert result_settings(f"file://{tmp_path}/res") == {
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "PREFECT_RESULTS_LOCAL_STORAGE_PATH": f"{tmp_path}/res"}
    assert result_settings("memory://bucket/results") == {
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": BLOCK_SLUG}
    with pytest.raises(ValueError, match=r"Prefect result storage URL 'nosuchfs://r'.*'nosuchfs'"):
        result_settings("nosuchfs://r")


def test_prefect_reads_the_settings_and_its_block_writes_to_the_url(tmp_path, monkeypatch, url):
    from prefect.filesystems import RemoteFileSystem
    from prefect.settings import Settings

    for k, v in result_settings(str(tmp_path / "res")).items():
        monkeypatch.setenv(k, v)
    settings = Settings()
    assert settings.results.persist_by_default is True
    assert settings.results.local_storage_path == tmp_path / "res"
    block = RemoteFileSystem(basepath=url + "/results")  # what save_results_block saves
    block.write_path("some-result", b"payload")
    assert fsspec.filesystem("memory").cat_file(_remote(url, "results/some-result")) == b"payload"


def test_cli_rejects_a_bad_url_before_any_work(tmp_path, monkeypatch, capsys):
    from flows.cli import main

    for k in ("SEMPROBE_WORKSPACE", "SEMPROBE_ARTIFACTS", "SEMPROBE_RESULTS_URL", "PREFECT_HOME"):
        monkeypatch.setenv(k, "")  # recorded, so what main() exports is undone after the test
        monkeypatch.delenv(k)
    for flag in ("--artifacts", "--results-url"):
        assert main(["--workspace", str(tmp_path / "ws"), flag, "nosuchfs://b/x", "sql", "select 1"]) == 2
        assert "unknown protocol 'nosuchfs'" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_sweep_replay_reads_artifacts_from_its_own_cache(url, tmp_path):
    """A worker journals its own cache path; the sweep host must read the artifact through the
    store (downloading it), not through that path."""
    from tasks import record

    worker = ArtifactStore(url, cache_dir=tmp_path / "worker-cache")
    _write(worker, "probes", "k", {"probe_results.parquet": b"rows"})
    j = record.Journal("run-1")
    out = {"stage": "probes", "key": "k", "status": "computed", "seconds": 1, "meta": {},
           "path": str(worker.path("probes", "k"))}
    j.probes(out)
    j.stage({**out, "stage": "train"})  # a stage whose files the recorder does not read

    seen = []

    class Reader(record.Recorder):
        def probes(self, out):
            seen.append((out["path"], (record.Path(out["path"]) / "probe_results.parquet").read_bytes()))

        def stage(self, out):
            seen.append((out["path"], None))

    host = ArtifactStore(url, cache_dir=tmp_path / "host-cache")
    record.replay(j, Reader(None, "run-1", None), store=host)
    assert seen == [(str(tmp_path / "host-cache" / "probes" / "k"), b"rows"), (out["path"], None)]


def test_clean_stale_keeps_a_legacy_scratch_folder_while_a_worker_holds_the_remote_lock(url, tmp_path):
    """A local staging folder named before the host tags is judged by this host's pids, which mean
    nothing for another worker's: while any worker holds the key's lock at the URL it stays."""
    s = ArtifactStore(url, cache_dir=tmp_path / "cache")
    legacy = s.stage_dir("data") / ".k.tmp-999999999-abcd1234"
    legacy.mkdir(parents=True)
    with s.lock("data", "k"):
        assert s.clean_stale("data", max_age_s=None) == [] and legacy.exists()
    assert s.clean_stale("data", max_age_s=None) == [legacy]
