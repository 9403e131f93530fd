"""``TrainConfig`` options of the stacked probe training.

Where probes train (``device``, ``probe.device``): the CPU path is unchanged, fitted probes
always come back to the CPU, and a device that cannot be used is a clear error. Early stopping
(``patience``): a probe stops on its own val curve, whatever else trains beside it. A probe's
result does not depend on what shares its chunk, even probes with wider heads; a probe without
val rows keeps its last epoch, one without training rows scores NaN."""

import numpy as np
import pytest
import torch

from probes.stacked import TrainConfig, evaluate, fit_stacked
from probes.stacked_training import bf16_native
from tasks.probe_config import ProbeConfig

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


# A probe's bits do not depend on the probes beside it with bf16 matmul inputs; in float32 the
# CPU's BLAS may round a product of another width differently (seen on a Zen 1 EPYC, AVX2), so the
# bit-for-bit checks of chunking below train in bf16.
def test_patience_stops_a_probe_on_its_own_val_curve():
    full, _ = fit(hidden=(32,), epochs=40, lr=0.05, bf16=True)
    early, acc = fit(hidden=(32,), epochs=40, lr=0.05, patience=3, bf16=True)
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
        alone, _ = fit(hidden=(32,), probes=(p,), epochs=40, lr=0.05, patience=3, bf16=True)
        assert alone.best_epoch[0] == early.best_epoch[p]
        for layer in range(2):
            assert torch.equal(alone.model.chunks[0].layer_weight(layer, 0),
                               early.model.chunks[0].layer_weight(layer, p))


def test_patience_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match=r"probe\.patience: expected an int >= 0"):
        ProbeConfig(patience=-1)


def mixed_widths(n=900, d=12, seed=1):
    """Rows and targets of a 4-class, a (13, 13)-class and a 2-class probe (direction, rel_start
    and facing_wall's head widths), each with a planted signal."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    ys = [x[:, :4].argmax(1), np.stack([(x[:, 4] > 0) * 6, (x[:, 5] > 0) * 6], 1), (x[:, 6] > 0) * 1]
    target = torch.full((3, n, 2), -1, dtype=torch.long)
    for p, y in enumerate(ys):
        y = torch.from_numpy(np.asarray(y).reshape(n, -1).astype(np.int64))
        target[p, :, :y.shape[1]] = y
    return torch.from_numpy(x), target, torch.ones(3, n), [(4,), (13, 13), (2,)]


@pytest.mark.parametrize("hidden", [(), (16, 32)])
def test_a_probe_beside_wider_probes_is_the_probe_trained_alone(hidden):
    x, target, weight, heads = mixed_widths()
    tr, va, te = slice(0, 500), slice(500, 700), slice(700, 900)
    split = lambda s, idx: (x[s], target[idx][:, s], weight[idx][:, s])  # noqa: E731
    cfg = TrainConfig(epochs=6, batch_size=64, lr=0.02, bf16=True)
    together = fit_stacked(*split(tr, [0, 1, 2]), heads, hidden, [5, 6, 7], 0, cfg, val=split(va, [0, 1, 2]))
    acc, _ = evaluate(together.model, *split(te, [0, 1, 2]))
    for p in range(3):
        alone = fit_stacked(*split(tr, [p]), [heads[p]], hidden, [5 + p], 0, cfg, val=split(va, [p]))
        assert alone.best_epoch[0] == together.best_epoch[p]
        assert evaluate(alone.model, *split(te, [p]))[0][0] == acc[p]
        mine = together.model.chunks[0].layer_weight(len(hidden), p)[:, :sum(heads[p])]
        assert torch.equal(alone.model.chunks[0].layer_weight(len(hidden), 0)[:, :sum(heads[p])], mine)


def test_without_val_rows_a_probe_keeps_its_last_epoch():
    x, target, weight = planted()
    cfg = TrainConfig(epochs=8, batch_size=64, lr=0.01)
    no_val = fit_stacked(x[:800], target[:, :800], weight[:, :800], [(4,)] * 2, (16,), [0, 1], 0, cfg)
    empty = fit_stacked(x[:800], target[:, :800], weight[:, :800], [(4,)] * 2, (16,), [0, 1], 0, cfg,
                        val=(x[800:], target[:, 800:], torch.zeros(2, 400)))
    assert (empty.best_epoch == 8).all() and np.isnan(empty.val_accuracy).all()
    te = (x[800:], target[:, 800:], weight[:, 800:])
    np.testing.assert_array_equal(evaluate(empty.model, *te)[0], evaluate(no_val.model, *te)[0])


def test_a_probe_without_training_rows_scores_nan():
    x, target, weight = planted()
    weight[1, :800] = 0  # probe 1 has val and test rows but nothing to train on
    fitted = fit_stacked(x[:800], target[:, :800], weight[:, :800], [(4,)] * 2, (16,), [0, 1], 0,
                         TrainConfig(epochs=3, batch_size=64), val=(x[800:1000], target[:, 800:1000], weight[:, 800:1000]))
    acc, n = evaluate(fitted.model, x[1000:], target[:, 1000:], weight[:, 1000:])
    assert acc[0] > 0.5 and np.isnan(acc[1]) and n[1] == 200
    assert fitted.best_epoch[1] == 0 and np.isnan(fitted.val_accuracy[1])


@pytest.mark.parametrize("hidden", [(), (16,), (16, 32)])
def test_the_batched_layout_computes_each_probe_as_the_per_probe_layout(hidden):
    """The GPU's layout (deep layers as batched matmuls over the probes) against the CPU's (one
    probe at a time), both on this CPU: the same logits, gradients and BatchNorm statistics,
    and the same probes after training, for probes of different head widths."""
    from probes.stacked_modules import ProbeChunk

    x, target, weight, heads = mixed_widths()
    per = ProbeChunk(x.shape[1], hidden, heads, [5, 6, 7], layout="per_probe").train()
    bat = ProbeChunk(x.shape[1], hidden, heads, [5, 6, 7], layout="batched").train()
    bat.load_state_dict(per.state_dict())
    lp, lb = per(x[:64]), bat(x[:64])
    torch.testing.assert_close(lb, lp, rtol=1e-5, atol=1e-5)
    lp.square().mean().backward()
    lb.square().mean().backward()
    for (name, a), b in zip(per.named_parameters(), bat.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    for a, b in zip(per.buffers(), bat.buffers()):
        torch.testing.assert_close(b, a)
    split = lambda s: (x[s], target[:, s], weight[:, s])  # noqa: E731
    fits = [fit_stacked(*split(slice(0, 500)), heads, hidden, [5, 6, 7], 0,
                        TrainConfig(epochs=4, batch_size=64, layout=layout), val=split(slice(500, 700)))
            for layout in ("per_probe", "batched")]
    np.testing.assert_array_equal(fits[1].best_epoch, fits[0].best_epoch)
    for a, b in zip(fits[0].model.parameters(), fits[1].model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    accs = [evaluate(f.model, *split(slice(700, 900)))[0] for f in fits]
    np.testing.assert_allclose(accs[1], accs[0], atol=0.01)


def test_an_unknown_layout_names_itself():
    with pytest.raises(ValueError, match=r"layout: 'stacked' is not one of"):
        fit(layout="stacked")


def test_default_precision_is_bf16_only_where_the_cpu_has_it_in_hardware(monkeypatch):
    """``bf16=None`` trains as the explicit choice ``bf16_native`` makes for the device: bf16 on a
    CPU with AMX or avx512_bf16, float32 on one that would emulate it; and the choice shows."""
    native = bf16_native(torch.device("cpu"))
    default, _ = fit("cpu")
    chosen, _ = fit("cpu", bf16=native)
    other, _ = fit("cpu", bf16=not native)
    assert all(torch.equal(a, b) for a, b in zip(default.model.parameters(), chosen.model.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(default.model.parameters(), other.model.parameters()))
    for avx512_bf16, amx, expected in [(False, False, False), (True, False, True), (False, True, True)]:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert bf16_native(torch.device("cpu")) is expected
        assert bf16_native(torch.device("cuda")) is True


def test_graphs_leave_the_cpu_path_as_it_was():
    """``graphs`` is a CUDA option: on the CPU the same bits as without it."""
    plain, acc_plain = fit("cpu", hidden=(32, 64))
    graphed, acc_graphed = fit("cpu", hidden=(32, 64), graphs=True)
    for a, b in zip(plain.model.parameters(), graphed.model.parameters()):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(acc_graphed, acc_plain)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("hidden", [(), (32,), (32, 64)])
def test_graphed_steps_train_as_the_eager_ones_on_cuda(hidden):
    """800 rows in minibatches of 128: per epoch 6 full steps (the first epoch's first 3 eager
    warm-ups, then captured and replayed) and one of 32 rows, eager between replays; the same
    estimator as eager steps
    (the optimizer's device-side step count rounds differently: close, not equal)."""
    eager, acc_eager = fit("cuda", hidden=hidden)
    graphed, acc_graphed = fit("cuda", hidden=hidden, graphs=True)
    assert acc_graphed.min() > 0.9
    assert np.abs(acc_graphed - acc_eager).max() < 0.05
    for a, b in zip(eager.model.parameters(), graphed.model.parameters()):
        assert torch.allclose(a, b, atol=0.05), "the graphed steps trained other weights"
