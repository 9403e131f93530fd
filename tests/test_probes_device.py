"""Where probes train (``TrainConfig.device``, ``probe.device``): the CPU path is unchanged,
fitted probes always come back to the CPU, and a device that cannot be used is a clear error."""

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


def fit(device: str, hidden=(32,)):
    x, target, weight = planted()
    tr, va = slice(0, 800), slice(800, 1200)
    cfg = TrainConfig(epochs=4, batch_size=128, device=device)
    fitted = fit_stacked(x[tr], target[:, tr], weight[:, tr], [(4,), (4,)], hidden, [0, 1], 0, cfg,
                         val=(x[va], target[:, va], weight[:, va]))
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
