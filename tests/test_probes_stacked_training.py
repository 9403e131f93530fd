"""``TrainConfig`` options of the stacked probe training.

Where probes train (``device``, ``probe.device``): the CPU path is unchanged, fitted probes
always come back to the CPU, and a device that cannot be used is a clear error. Early stopping
(``patience``): a probe stops on its own val curve, whatever else trains beside it."""

import numpy as np
import pytest
import torch

from probes.stacked import TrainConfig, evaluate, fit_stacked
from tasks.stage_configs import ProbeConfig

CUDA = torch.cuda.is_available()


def planted(n=1200, d=16, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, :4] += 3.0 * np.eye(4, dtype=np.float32)[y]
    target = torch.from_numpy(np.stack([y, (y + 1) % 4]))[..., None]  # two probes, one head each
    return torch.from_numpy(x), target, torch.ones(2, n)


def fit(device: str = "cpu", hidden=(32,), probes=(0, 1), **config):
    x, target, weight = planted()
    target, weight, probes = target[list(probes)], weight[list(probes)], list(probes)
    tr, va = slice(0, 800), slice(800, 1200)
    cfg = TrainConfig(**{"epochs": 4, "batch_size": 128, "device": device, **config})
    fitted = fit_stacked(x[tr], target[:, tr], weight[:, tr], [(4,)] * len(probes), hidden, probes, 0,
                         cfg, val=(x[va], target[:, va], weight[:, va]))
    acc, _ = evaluate(fitted.model, x[va], target[:, va], weight[:, va])
    return fitted, acc


def test_auto_trains_where_torch_can_and_returns_probes_on_the_cpu():
    cpu, acc_cpu = fit("cpu")
    auto, acc_auto = fit("auto")
    assert {p.device.type for p in auto.model.parameters()} == {"cpu"}
    assert {b.device.type for b in auto.model.buffers()} == {"cpu"}
    assert acc_cpu.min() > 0.9
    if CUDA:  # other kernels: the same estimator, not the same bits
        assert np.abs(acc_auto - acc_cpu).max() < 0.05
    else:
        for a, b in zip(cpu.model.parameters(), auto.model.parameters()):
            assert torch.equal(a, b)
        np.testing.assert_array_equal(acc_auto, acc_cpu)
        np.testing.assert_array_equal(auto.best_epoch, cpu.best_epoch)


def test_unknown_device_names_itself():
    with pytest.raises(ValueError, match=r"device: 'gpu' is not one of"):
        fit("gpu")
    with pytest.raises(ValueError, match=r"probe\.device: 'tpu' is not one of"):
        ProbeConfig(device="tpu")


@pytest.mark.skipif(CUDA, reason="this machine has CUDA")
def test_cuda_without_a_cuda_device_is_a_clear_error():
    with pytest.raises(ValueError, match="'cuda' asked for but torch sees no CUDA device"):
        fit("cuda")


def test_patience_stops_a_probe_on_its_own_val_curve():
    full, _ = fit(hidden=(32,), epochs=40, lr=0.05)
    early, acc = fit(hidden=(32,), epochs=40, lr=0.05, patience=3)
    assert len(early.history) < 40  # the chunk stopped once both probes had stalled
    for p in range(2):
        curve = np.array([h[p] for h in early.history])
        best = int(early.best_epoch[p])
        # its best epoch is the first best of the epochs up to where it stopped (best + 3);
        # what the chunk trained after that no longer counts for it
        assert best + 3 <= len(curve) and int(np.argmax(curve[:best + 3])) == best - 1
        # stopping early only cuts the curve: the epochs it ran are the full run's
        np.testing.assert_array_equal(curve, [h[p] for h in full.history[:len(curve)]])
    assert acc.min() > 0.9
    # each probe alone (chunk of one) stops and chooses exactly as in the chunk of two
    for p in range(2):
        alone, _ = fit(hidden=(32,), probes=(p,), epochs=40, lr=0.05, patience=3)
        assert alone.best_epoch[0] == early.best_epoch[p]
        for a, b in zip(alone.model.chunks[0].deep, [early.model.chunks[0].deep[p]]):
            assert torch.equal(a, b)


def test_patience_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match=r"probe\.patience: expected an int >= 0"):
        ProbeConfig(patience=-1)
