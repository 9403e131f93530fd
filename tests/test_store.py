import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from tasks.store import ArtifactStore
from tasks.store_files import LockTimeout


def _write(store, stage, key, files, meta=None):
    with store.write(stage, key, meta=meta) as tmp:
        for rel, data in files.items():
            p = tmp / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
    return store.path(stage, key)


def test_path_layout_and_name_validation(tmp_path):
    s = ArtifactStore(tmp_path)
    assert s.path("data", "abc123") == tmp_path / "data" / "abc123"
    assert ArtifactStore(f"file://{tmp_path}").path("a", "b") == tmp_path / "a" / "b"
    for bad in ["../x", ".hidden", "a/b", "", "x..y"]:
        with pytest.raises(ValueError):
            s.path("data", bad)
    # other fsspec URLs are the remote store (tests/test_store_remote.py)


def test_write_manifest_and_complete(tmp_path):
    s = ArtifactStore(tmp_path)
    assert not s.is_complete("data", "k1")
    meta = {"rows": 1}
    with s.write("data", "k1", meta=meta) as tmp:
        assert tmp.parent == tmp_path / "data"
        assert tmp.name.startswith(".k1.tmp-")
        (tmp / "a.bin").write_bytes(b"hello")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("world")
        meta["shape"] = [2, 3]  # meta may be filled inside the block
        assert not s.is_complete("data", "k1")
    assert s.is_complete("data", "k1")
    m = s.manifest("data", "k1")
    assert m["key"] == "k1" and m["stage"] == "data"
    assert set(m["files"]) == {"a.bin", "sub/b.txt"}
    assert m["files"]["a.bin"]["size"] == 5
    assert m["files"]["a.bin"]["sha256"] == (
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    assert m["meta"] == {"rows": 1, "shape": [2, 3]}
    # no temp folders left behind
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["k1"]


@pytest.mark.parametrize("damage", ["delete_file", "corrupt_same_size", "truncate",
                                    "delete_manifest", "garbage_manifest", "delete_folder"])
def test_missing_or_corrupt_is_not_complete(tmp_path, damage):
    s = ArtifactStore(tmp_path)
    d = _write(s, "act", "k", {"x.npy": b"0123456789", "y.npy": b"abc"})
    assert s.is_complete("act", "k")
    if damage == "delete_file":
        (d / "x.npy").unlink()
    elif damage == "corrupt_same_size":
        (d / "x.npy").write_bytes(b"0123456780")
    elif damage == "truncate":
        (d / "y.npy").write_bytes(b"ab")
    elif damage == "delete_manifest":
        (d / "manifest.json").unlink()
    elif damage == "garbage_manifest":
        (d / "manifest.json").write_text("{not json")
    elif damage == "delete_folder":
        import shutil
        shutil.rmtree(d)
    assert not s.is_complete("act", "k")
    if damage == "corrupt_same_size":
        assert s.is_complete("act", "k", verify=False)  # size-only check cannot see it
    else:
        assert not s.is_complete("act", "k", verify="stat")


def test_stat_verify_skips_hash_only_when_unchanged(tmp_path):
    s = ArtifactStore(tmp_path)
    d = _write(s, "act", "k", {"x": b"0123456789"})
    assert s.is_complete("act", "k", verify="stat")
    st = (d / "x").stat()
    (d / "x").write_bytes(b"012345678X")  # same size, then restore the old mtime
    os.utime(d / "x", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert s.is_complete("act", "k", verify="stat")  # documented blind spot: bit rot
    assert not s.is_complete("act", "k")  # full verification catches it
    os.utime(d / "x", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert not s.is_complete("act", "k", verify="stat")
    with pytest.raises(ValueError):
        s.is_complete("act", "k", verify="fast")


def test_exception_keeps_previous_artifact(tmp_path):
    s = ArtifactStore(tmp_path)
    _write(s, "data", "k", {"f": b"good"})
    with pytest.raises(RuntimeError):
        with s.write("data", "k") as tmp:
            (tmp / "f").write_bytes(b"half-writ")
            raise RuntimeError("killed")
    assert s.is_complete("data", "k")
    assert (s.path("data", "k") / "f").read_bytes() == b"good"
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["k"]


def test_write_replaces_corrupt_previous(tmp_path):
    s = ArtifactStore(tmp_path)
    d = _write(s, "data", "k", {"f": b"v1", "stale": b"old"})
    (d / "f").write_bytes(b"XX")
    assert not s.is_complete("data", "k")
    _write(s, "data", "k", {"f": b"v2"})
    assert s.is_complete("data", "k")
    assert sorted(p.name for p in d.iterdir()) == ["f", "manifest.json"]
    assert (d / "f").read_bytes() == b"v2"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["k"]


def test_non_json_meta_fails_and_cleans_up(tmp_path):
    s = ArtifactStore(tmp_path)
    with pytest.raises(TypeError):
        with s.write("data", "k", meta={"x": object()}) as tmp:
            (tmp / "f").write_bytes(b"1")
    assert not s.path("data", "k").exists()
    assert list((tmp_path / "data").iterdir()) == []


def test_clean_stale_removes_dead_writer_temp(tmp_path):
    from tasks.store_files import HOST_TAG

    s = ArtifactStore(tmp_path)
    (tmp_path / "data").mkdir()
    dead = tmp_path / "data" / f".k.tmp-999999999-{HOST_TAG}abcd1234"
    legacy = tmp_path / "data" / ".k.old-999999999-abcd1234"  # named before the host tags
    live = tmp_path / "data" / f".k.tmp-{os.getpid()}-{HOST_TAG}abcd1234"
    other_host = "11111111" if HOST_TAG != "11111111" else "22222222"
    elsewhere = tmp_path / "data" / f".k.tmp-999999999-{other_host}abcd1234"
    for p in (dead, legacy, live, elsewhere):
        p.mkdir()
    # another host's writer is never judged by this host's pids, only by age
    assert sorted(s.clean_stale("data", max_age_s=None)) == sorted([dead, legacy])
    assert live.exists() and elsewhere.exists() and not dead.exists() and not legacy.exists()
    os.utime(elsewhere, (time.time() - 7200, time.time() - 7200))
    assert s.clean_stale("data", max_age_s=3600) == [elsewhere]
    # nor while a process holds the key's lock: a stage computing longer than max_age_s, or another
    # host's writer named before the tags (its pid means nothing here)
    held = tmp_path / "data" / ".k3.tmp-999999999-abcd1234"
    computing = tmp_path / "data" / f".k4.tmp-999999999-{other_host}abcd1234"
    dead_here = tmp_path / "data" / f".k4.old-999999999-{HOST_TAG}abcd1234"
    for p in (held, computing, dead_here):
        p.mkdir()
    os.utime(computing, (time.time() - 7200, time.time() - 7200))
    with s.lock("data", "k3"), s.lock("data", "k4"):
        # this host's dead writer goes whoever holds the key now (a new writer has its own folder)
        assert s.clean_stale("data", max_age_s=3600) == [dead_here]
        assert held.exists() and computing.exists()
    assert sorted(s.clean_stale("data", max_age_s=3600)) == sorted([held, computing])
    # the store's own scratch folders carry this host's tag
    with s.write("data", "k2") as tmp:
        assert tmp.name.startswith(".k2.tmp-") and f"-{HOST_TAG}" in tmp.name


def _hold_lock(root, ready, release):
    s = ArtifactStore(root)
    with s.lock("data", "k"):
        ready.set()
        release.wait(10)


def test_lock_timeout_against_other_process(tmp_path):
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    p.start()
    try:
        assert ready.wait(20)
        s = ArtifactStore(tmp_path)
        t0 = time.monotonic()
        with pytest.raises(LockTimeout):
            with s.lock("data", "k", timeout=0.3):
                pass
        assert time.monotonic() - t0 >= 0.3
        with s.lock("data", "other", timeout=0.3):  # other keys are independent
            pass
    finally:
        release.set()
        p.join(10)
    with ArtifactStore(tmp_path).lock("data", "k", timeout=2):
        pass


def _race_worker(root, counter, start):
    s = ArtifactStore(root)
    start.wait(20)

    def compute(tmp):
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough that the other process is waiting on the lock
        (tmp / "out.txt").write_text("result")
        return {"by": os.getpid()}

    manifest, computed = s.ensure("train", "samekey", compute)
    assert manifest["files"]["out.txt"]["size"] == 6


def test_two_processes_compute_once(tmp_path):
    ctx = mp.get_context("spawn")
    counter = tmp_path / "count.txt"
    start = ctx.Event()
    procs = [ctx.Process(target=_race_worker, args=(str(tmp_path / "store"), str(counter), start))
             for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(counter.read_text().splitlines()) == 1
    s = ArtifactStore(tmp_path / "store")
    assert s.is_complete("train", "samekey")
    # third call: cached, compute not called
    m, computed = s.ensure("train", "samekey", lambda tmp: pytest.fail("recomputed"))
    assert computed is False and m["meta"]["by"] in {p.pid for p in procs}


def test_ensure_recomputes_corrupt(tmp_path):
    s = ArtifactStore(tmp_path)
    calls = []

    def compute(tmp):
        calls.append(1)
        (tmp / "a").write_text("x" * 10)

    assert s.ensure("s", "k", compute)[1] is True
    assert s.ensure("s", "k", compute)[1] is False
    (s.path("s", "k") / "a").write_text("y" * 10)
    assert s.ensure("s", "k", compute)[1] is True
    assert len(calls) == 2
    assert json.loads((s.path("s", "k") / "manifest.json").read_text())["key"] == "k"


def test_status_shows_a_stage_another_holder_is_computing(tmp_path):
    """``semprobe status`` says 'running' for a key whose lock a computation holds (not 'missing'
    for an hour-long probe grid), and 'missing' again once the lock is released unfinished."""
    from flows.status import stage_status
    from tasks.workspace import Workspace

    ws = Workspace.at(tmp_path / "ws")
    dataset = next(r for r in stage_status(ws, "smoke") if r["stage"] == "dataset")
    assert dataset["state"] == "missing" and ws.store.computing_since("dataset", dataset["key"]) is None
    t0 = time.time()
    with ws.store.lock("dataset", dataset["key"]):
        since = ws.store.computing_since("dataset", dataset["key"])
        assert since is not None and abs(since - t0) < 60
        row = next(r for r in stage_status(ws, "smoke") if r["stage"] == "dataset")
        assert row["state"] == "running" and "since" in row["detail"], row
    assert ws.store.computing_since("dataset", dataset["key"]) is None
    assert next(r for r in stage_status(ws, "smoke") if r["stage"] == "dataset")["state"] == "missing"


def test_status_shows_a_running_training_at_its_live_step(tmp_path):
    """Between checkpoints a training's step, rate and loss come from its ``progress.json``, while
    a process holds the training's lock; once none does, status names the checkpoint it resumes at."""
    from flows.presets import load_preset
    from flows.status import stage_status
    from model.progress import ProgressFile
    from model.train import train
    from tasks.dataset import data_dir, generate_dataset
    from tasks.workspace import Workspace

    ws = Workspace.at(tmp_path / "ws")
    cfg = load_preset("smoke")
    ds = generate_dataset.fn(str(ws.root), cfg.data)
    key = next(r for r in stage_status(ws, "smoke") if r["stage"] == "train")["key"]
    train(cfg.model, cfg.train, data_dir(ds), ws.work_dir / "train" / key, progress=False, stop_after=2)
    live = ProgressFile(ws.work_dir / "train" / key, cfg.train.steps)  # as a process resumed at step 2
    live.start(2, cfg.train.steps)
    live.update(7, 1.5, 5000)
    with ws.store.lock("train", key):
        row = next(r for r in stage_status(ws, "smoke") if r["stage"] == "train")
        assert row["state"] == "running" and "checkpointed at step 2" in row["detail"], row
        assert "; at step 7 at " in row["detail"] and "loss 1.5000" in row["detail"], row
    row = next(r for r in stage_status(ws, "smoke") if r["stage"] == "train")
    assert row["state"] == "missing" and "at step 7" not in row["detail"], row


def test_run_stage_stamps_the_machine_that_computed_the_artifact(tmp_path):
    import torch

    from model.threads import PROCESS_THREADS
    from tasks.stage import machine, run_stage

    def compute(tmp):
        (tmp / "a").write_text("x")
        return {"step": 3, "threads": torch.get_num_threads()}

    torch.set_num_threads(PROCESS_THREADS + 1)  # what a stage beside it might have set
    try:
        first = run_stage(str(tmp_path), "s", "k", compute)
        assert torch.get_num_threads() == PROCESS_THREADS + 1  # given back afterwards
    finally:
        torch.set_num_threads(PROCESS_THREADS)
    assert first["status"] == "computed" and first["meta"]["step"] == 3
    assert first["meta"]["threads"] == PROCESS_THREADS  # the stage ran on the process's count
    stamp = first["meta"]["machine"]
    assert stamp == machine() and stamp["torch"] == torch.__version__ and stamp["cpu"]
    assert stamp["torch_threads"] == PROCESS_THREADS
    assert stamp["cuda"] == (torch.cuda.get_device_name() if torch.cuda.is_initialized() else None)
    # a cached artifact keeps its own stamp (what computed it, not what found it) ...
    manifest = tmp_path / "artifacts" / "s" / "k" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["meta"]["machine"] = {"cpu": "elsewhere"}
    manifest.write_text(json.dumps(m))
    again = run_stage(str(tmp_path), "s", "k", compute)
    assert again["status"] == "cached" and again["meta"]["machine"] == {"cpu": "elsewhere"}
    # ... and a forced recompute stamps anew
    forced = run_stage(str(tmp_path), "s", "k", compute, force=True)
    assert forced["meta"]["machine"] == machine()


def test_a_published_checkpoint_changed_in_place_is_an_error_naming_it(tmp_path):
    """A checkpoint file rewritten with the same size after publishing: the fan-out's reader
    hashes it (its mtime moved) and names the checkpoint, instead of loading other weights."""
    from tasks.training import CHECKPOINT_FILE, publish_checkpoint, published_checkpoint, published_checkpoints
    from tasks.workspace import Workspace

    ws = Workspace.at(str(tmp_path / "ws"))
    src = tmp_path / "step.pt"
    src.write_bytes(b"weights-0")
    publish_checkpoint(ws, "tk", 3, src, 10)
    assert published_checkpoint(str(ws.root), "tk", 4) is None  # not published: None, no error
    ck = published_checkpoint(str(ws.root), "tk", 3)
    assert ck["step"] == 3 and ck["tokens_seen"] == 30
    path = Path(ck["path"]) / CHECKPOINT_FILE
    time.sleep(0.01)
    path.write_bytes(b"weights-1")  # same size, new bytes (the hard link shares the source's inode)
    for read in (lambda: published_checkpoint(str(ws.root), "tk", 3), lambda: published_checkpoints(str(ws.root), "tk")):
        with pytest.raises(ValueError, match="checkpoint tk-s0000003: .* no longer matches the sha256.*delete the "
                                             "train artifact"):
            read()
