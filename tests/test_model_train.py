"""Training: loss goes down, resume equals straight, checkpoints fail loudly when wrong."""

import math
import os
import subprocess
import sys
import threading

import pytest
import torch

import karel
from model import machine
from model.checkpoint import FolderInUse, list_checkpoints, load_checkpoint, load_model
from model.config import checkpoint_steps, preset
from model.machine import cpu_identity
from model.progress import read_progress
from model.threads import PROCESS_THREADS
from model.train import autocast_context, train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("karel") / "data"
    karel.generate_dataset(karel.DataConfig(seed=3, n_train_generated=200, n_val=16, n_test=16), path)
    return path


def _cfg(**train):
    return preset("smoke", train={"steps": 4, "ckpt_every": 2, "ckpt_log_count": 0, **train})


def test_smoke_training_lowers_loss_and_follows_schedule(data_dir, tmp_path):
    m, t = preset("smoke", train={"steps": 10, "ckpt_every": 5, "ckpt_log_count": 2, "loss_on": "program"})
    seen = []
    found = train(m, t, data_dir, tmp_path, on_checkpoint=lambda s, p: seen.append((s, p)), progress=False)
    assert [s for s, _ in found] == checkpoint_steps(t) == [0, 1, 2, 5, 10]
    assert seen == found and all(p.exists() for _, p in seen)
    first = load_checkpoint(found[1][1])["extra"]["train_loss"]
    last = load_checkpoint(found[-1][1])["extra"]["last_loss"]
    assert last < first - 0.5, (first, last)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp files left


@pytest.mark.parametrize("packing,extra,optimizer", [
    ("blocks", {}, "adamw"), ("samples", {}, "adamw"), ("samples", {"curriculum_steps": 4}, "adamw"),
    ("samples", {"anneal_steps": 2, "anneal_min_actions": 8}, "adamw"), ("samples", {}, "muon"),
    ("samples", {"spec_pairs": (1, 2, 5)}, "muon"),
])
def test_resume_equals_straight(data_dir, tmp_path, packing, extra, optimizer):
    m, t = _cfg(cross_sample_attention=False, packing=packing, optimizer=optimizer, **extra)
    straight = train(m, t, data_dir, tmp_path / "a", progress=False)
    train(m, t, data_dir, tmp_path / "b", progress=False, stop_after=3)
    assert [s for s, _ in list_checkpoints(tmp_path / "b")] == [0, 2, 3]
    resumed = train(m, t, data_dir, tmp_path / "b", progress=False)
    a, b = load_checkpoint(straight[-1][1]), load_checkpoint(resumed[-1][1])
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["data"] == b["data"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["extra"]["train_loss"] == b["extra"]["train_loss"]  # steps 3 and 4, across the stop at 3
    # A finished run called again does nothing and returns the same checkpoints.
    assert train(m, t, data_dir, tmp_path / "b", progress=False) == resumed


def test_training_writes_its_live_step_where_status_reads_it(data_dir, tmp_path):
    m, t = _cfg()
    assert read_progress(tmp_path) is None
    train(m, t, data_dir, tmp_path, progress=False, stop_after=3)
    live = read_progress(tmp_path)
    assert (live["step"], live["last_step"], live["steps"], live["pid"]) == (3, 3, 4, os.getpid())
    assert live["tokens_per_s"] > 0 and live["seconds_per_step"] > 0 and math.isfinite(live["loss"])
    train(m, t, data_dir, tmp_path, progress=False, stop_after=3)  # nothing to train: no step to show
    assert read_progress(tmp_path) is None  # not the last process's, as if it were live
    # a stop is written at once (steps 1 and 3 here, not 2: within 15 s of the first)
    seen, polls = [], iter(range(1, 10))
    train(m, t, data_dir, tmp_path / "b", progress=False, should_stop=lambda: next(polls) == 3,
          on_progress=lambda row: seen.append(row["step"]))
    assert seen == [1, 3] and read_progress(tmp_path / "b")["step"] == 3
    train(m, t, data_dir, tmp_path, progress=False)  # resumed: the file follows it to the end
    assert read_progress(tmp_path)["step"] == 4


def test_a_second_process_training_into_the_same_folder_is_refused(data_dir, tmp_path):
    m, t = _cfg()
    train(m, t, data_dir, tmp_path, progress=False, stop_after=2)
    before = {p.name: p.stat().st_mtime_ns for _, p in list_checkpoints(tmp_path)}
    holder = subprocess.Popen(  # another trainer of this folder, as sole_writer holds it
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUse, match=str(tmp_path)):
            train(m, t, data_dir, tmp_path, progress=False)
        # nothing read or written: the first trainer's checkpoints are as they were
        assert {p.name: p.stat().st_mtime_ns for _, p in list_checkpoints(tmp_path)} == before
    finally:
        holder.kill()
        holder.wait()
    assert [s for s, _ in train(m, t, data_dir, tmp_path, progress=False)] == [0, 2, 4]


def test_a_folder_that_cannot_be_locked_trains_with_a_warning(data_dir, tmp_path, monkeypatch):
    import errno

    from model import checkpoint

    def nfs_flock(fd, op):  # NFS's flock emulation refuses a folder opened read-only
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(checkpoint.fcntl, "flock", nfs_flock)
    with pytest.warns(UserWarning, match="cannot lock .*would not be refused"):
        found = train(*_cfg(), data_dir, tmp_path, progress=False)
    assert [s for s, _ in found] == [0, 2, 4]


@pytest.mark.parametrize("extra", [{"packing": "blocks"}, {"packing": "samples", "spec_pairs": (1, 2, 5)}])
def test_micro_batches_change_nothing_but_memory(data_dir, tmp_path, extra):
    """Micro-batches weigh by their share of the batch's loss weight: the same logged loss and
    (to float rounding) the same weights as the whole batch at once."""
    whole = train(*_cfg(batch_size=4, **extra), data_dir, tmp_path / "a", progress=False)
    split = train(*_cfg(batch_size=4, micro_batch=2, **extra), data_dir, tmp_path / "b", progress=False)
    a, b = load_checkpoint(whole[-1][1]), load_checkpoint(split[-1][1])
    assert a["extra"]["last_loss"] == pytest.approx(b["extra"]["last_loss"], rel=1e-5)
    assert a["extra"]["train_loss"] == pytest.approx(b["extra"]["train_loss"], rel=1e-5)
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5, msg=k)


def test_checkpoint_from_before_a_new_field_resumes_at_its_default(data_dir, tmp_path):
    m, t = _cfg(packing="samples")
    train(m, t, data_dir, tmp_path, progress=False, stop_after=3)
    path = list_checkpoints(tmp_path)[-1][1]
    old = torch.load(path, weights_only=True)
    del old["train_config"]["anneal_steps"]  # as written before the field existed
    torch.save(old, path)
    with pytest.raises(ValueError, match=r"differs.*\['anneal_steps'\]"):
        train(m, _cfg(packing="samples", anneal_steps=2)[1], data_dir, tmp_path, progress=False)
    assert train(m, t, data_dir, tmp_path, progress=False)[-1][0] == 4


@pytest.mark.skipif(PROCESS_THREADS < 2, reason="needs a process that starts on 2+ torch threads")
def test_training_keeps_its_thread_count_beside_a_one_thread_neighbour(data_dir, tmp_path):
    # A probe grid on one thread beside training: torch hands the neighbour's count to any thread
    # that starts after it, which changed training's bits (one vs two threads differ) until
    # training pinned its own count.
    m, t = _cfg()
    set_, done = threading.Event(), threading.Event()

    def neighbour():
        torch.set_num_threads(1)
        set_.set()
        done.wait()

    seen, box = [], {}
    other = threading.Thread(target=neighbour)
    other.start()
    set_.wait()
    try:
        worker = threading.Thread(target=lambda: box.setdefault("found", train(
            m, t, data_dir, tmp_path, progress=False, on_checkpoint=lambda s, p: seen.append(torch.get_num_threads()))))
        worker.start()
        worker.join()
    finally:
        done.set()
        other.join()
    assert seen and set(seen) == {PROCESS_THREADS}
    assert [load_checkpoint(p)["extra"]["threads"] for _, p in box["found"]] == [PROCESS_THREADS] * len(seen)


@pytest.mark.parametrize("changed", ["threads", "cpu", "device", "precision"])
def test_resuming_on_another_thread_count_cpu_device_or_precision_warns(data_dir, tmp_path, changed):
    m, t = _cfg()
    train(m, t, data_dir, tmp_path, progress=False, stop_after=3)
    path = list_checkpoints(tmp_path)[-1][1]
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["extra"]["cpu"] == cpu_identity() and ckpt["extra"]["threads"] == PROCESS_THREADS
    assert ckpt["extra"]["device"] == "cpu" and ckpt["extra"]["precision"] in ("bf16", "float32")
    if changed == "threads":
        ckpt["extra"]["threads"] = PROCESS_THREADS + 1
        expect = rf"on {PROCESS_THREADS} torch threads.*trained on {PROCESS_THREADS + 1}"
    elif changed == "device":
        ckpt["extra"]["device"] = "cuda"
        expect = r"with device cpu, its checkpoint was trained with cuda"
    elif changed == "precision":  # e.g. bf16 autocast on a GPU, float32 here
        now = ckpt["extra"]["precision"]
        ckpt["extra"]["precision"] = other = "bf16" if now == "float32" else "float32"
        expect = rf"with precision {now}, its checkpoint was trained with {other}"
    else:
        ckpt["extra"]["cpu"] = {"cpu": "Some Other CPU (family 6, model 143)", "cpu_isa": ["amx_bf16"]}
        expect = r"another CPU \(.*\) than its checkpoint's \(Some Other CPU"
    torch.save(ckpt, path)
    with pytest.warns(UserWarning, match=expect):
        found = train(m, t, data_dir, tmp_path, progress=False)
    extra = load_checkpoint(found[-1][1])["extra"]
    assert extra["threads"] == PROCESS_THREADS and extra["cpu"] == cpu_identity()


def test_an_explicit_thread_count_is_used_and_recorded(data_dir, tmp_path):
    m, t = _cfg()
    seen, before = [], torch.get_num_threads()
    found = train(m, t, data_dir, tmp_path, progress=False, threads=1,
                  on_checkpoint=lambda s, p: seen.append(torch.get_num_threads()))
    assert set(seen) == {1} and {load_checkpoint(p)["extra"]["threads"] for _, p in found} == {1}
    assert torch.get_num_threads() == before  # given back


def test_bad_checkpoints_raise(data_dir, tmp_path):
    m, t = _cfg(steps=1, ckpt_every=1)
    found = train(m, t, data_dir, tmp_path / "run", progress=False)
    path = found[-1][1]
    # Another model shape in the same folder.
    other = preset("smoke", model={"d_model": 64}, train={"steps": 1, "ckpt_every": 1, "ckpt_log_count": 0})
    with pytest.raises(ValueError, match="model config differs.*d_model"):
        train(*other, data_dir, tmp_path / "run", progress=False)
    # A checkpoint written before a model field existed reads it as its default.
    old = torch.load(path, weights_only=True)
    for name in ("qk_norm", "mlp_act"):
        del old["model_config"][name]
    torch.save(old, path)
    assert train(m, t, data_dir, tmp_path / "run", progress=False)[-1][0] == 1
    # Another train config (not resumable).
    with pytest.raises(ValueError, match="lr"):
        train(m, preset("smoke", train={"steps": 1, "ckpt_every": 1, "ckpt_log_count": 0, "lr": 1e-4})[1],
              data_dir, tmp_path / "run", progress=False)
    # A truncated file.
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(cut)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_model(garbage)
    # A tokenizer mismatch.
    ckpt = torch.load(path, weights_only=True)
    ckpt["vocab"] = ckpt["vocab"][::-1]
    swapped = tmp_path / "swapped.pt"
    torch.save(ckpt, swapped)
    with pytest.raises(ValueError, match="tokenizer mismatch"):
        load_model(swapped)
    # Something that is not a checkpoint dict.
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a semprobe checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    model, loaded = load_model(path)
    assert loaded["step"] == 1 and not model.training


@pytest.mark.parametrize("isa, native", [(["avx2"], False), (["avx512_bf16", "avx512f", "avx2"], True),
                                         (["amx_bf16", "avx512_bf16", "avx512f", "avx2"], True), ([], False)])
def test_auto_autocast_is_bf16_only_where_the_cpu_multiplies_bf16_in_hardware(monkeypatch, isa, native):
    """An AVX2-only CPU emulates bf16 matmuls (5x float32's step on a Zen 1 EPYC): "auto" stays
    in float32 there; "bf16" still forces it, "off" never; CUDA is always native."""
    monkeypatch.setattr(machine, "cpu_identity", lambda: {"cpu": "Test CPU", "cpu_isa": isa})
    cpu = torch.device("cpu")
    assert machine.bf16_native(cpu) is native and machine.bf16_native("cuda") is True

    def bf16_on(autocast):
        with autocast_context(_cfg(autocast=autocast)[1], cpu):
            return torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")

    assert bf16_on("auto") is native
    assert bf16_on("bf16") is True and bf16_on("off") is False
