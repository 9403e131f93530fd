"""Model configs, the transformer (shapes, causality, KV cache), data packing, phase rule."""

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.optim._muon as torch_muon

import karel
from karel.text import program_actions
from model import machine
from model.config import (
    ModelConfig, TrainConfig, checkpoint_steps, config_from_dict, lr_at, preset, replace_fields,
)
from model.data import PackedBlocks, SampleRows, batch_inputs, make_stream, tokenize
from model.optim import Float32Muon, make_optimizer, newton_schulz_float32, set_lr
from model.phases import label_phases
from model.transformer import KVCache, Transformer, sample_mask

CFG = ModelConfig(vocab_size=48, n_layer=2, d_model=32, n_head=4, rotary_dim=4, d_mlp=64, context=64)


def test_unknown_field_is_named():
    with pytest.raises(ValueError, match="bogus"):
        replace_fields(ModelConfig(), {"bogus": 1})
    with pytest.raises(ValueError, match="nope"):
        config_from_dict(TrainConfig, {"nope": 2})
    with pytest.raises(ValueError, match="rotary_dim"):
        ModelConfig(d_model=64, n_head=4, rotary_dim=18)
    with pytest.raises(ValueError, match="loss_on"):
        TrainConfig(loss_on="prompt")
    with pytest.raises(ValueError, match="mlp_act: 'swish' is not one of"):
        ModelConfig(mlp_act="swish")
    with pytest.raises(ValueError, match="qk_norm: must be a bool"):
        ModelConfig(qk_norm="yes")
    with pytest.raises(ValueError, match="preset"):
        preset("huge")


def test_paper_preset_and_schedules():
    m, t = preset("paper")
    assert (m.n_layer, m.d_model, m.n_head, m.rotary_dim, m.d_mlp, m.context) == (20, 1024, 16, 32, 4096, 2048)
    assert (t.lr, t.warmup_steps, t.steps, t.tokens_per_step, t.weight_decay) == (5e-6, 6000, 80_000, 16 * 2048, 0.0)
    steps = checkpoint_steps(t)
    assert steps[0] == 0 and steps[-1] == 80_000 and 2000 in steps and 76_000 in steps
    assert len([s for s in steps if 0 < s < 2000]) >= 5  # dense early
    assert lr_at(t, 0) == pytest.approx(5e-6 / 6000) and lr_at(t, 5999) == pytest.approx(5e-6)
    assert lr_at(t, 80_000) == pytest.approx(0.0)
    assert config_from_dict(ModelConfig, m.__dict__) == m


def test_shapes_and_hidden_states():
    model = Transformer(CFG)
    x = torch.randint(0, CFG.vocab_size, (3, 10))
    logits, hidden = model(x, return_hidden=True)
    assert logits.shape == (3, 10, CFG.vocab_size)
    assert len(hidden) == CFG.n_layer + 1 and all(h.shape == (3, 10, CFG.d_model) for h in hidden)
    assert torch.equal(hidden[0], model.embed(x))  # embedding output first
    last, hl = model(x, return_hidden=True, last_only=True)
    torch.testing.assert_close(last[:, 0], logits[:, -1])
    torch.testing.assert_close(hl[-1][:, 0], hidden[-1][:, -1])


def test_causal_masking():
    torch.manual_seed(0)
    model = Transformer(CFG).eval()
    x = torch.randint(0, CFG.vocab_size, (2, 16))
    y = x.clone()
    y[:, 9:] = (y[:, 9:] + 1) % CFG.vocab_size
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    torch.testing.assert_close(a[:, :9], b[:, :9])
    assert not torch.allclose(a[:, 9:], b[:, 9:])


def test_kv_cache_matches_uncached():
    torch.manual_seed(1)
    model = Transformer(CFG).eval()
    x = torch.randint(0, CFG.vocab_size, (3, 24))
    with torch.no_grad():
        full, hidden = model(x, return_hidden=True)
        cache = KVCache.empty(CFG, 3, 24, "cpu", torch.float32)
        out, _ = model(x[:, :12], cache=cache)
        steps = [out]
        for t in range(12, 24):
            o, h = model(x[:, t : t + 1], cache=cache, return_hidden=True)
            steps.append(o)
            torch.testing.assert_close(h[-1][:, 0], hidden[-1][:, t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="context"):
        model(torch.zeros(1, CFG.context + 1, dtype=torch.long))


def test_sample_mask_blocks_other_samples():
    torch.manual_seed(2)
    model = Transformer(CFG).eval()
    x = torch.randint(2, CFG.vocab_size, (1, 20))
    doc = torch.tensor([[0] * 8 + [1] * 12])
    y = x.clone()
    y[:, :8] = (y[:, :8] + 5) % CFG.vocab_size
    with torch.no_grad():
        a, _ = model(x, mask=sample_mask(doc))
        b, _ = model(y, mask=sample_mask(doc))
        c, _ = model(y)
    torch.testing.assert_close(a[:, 8:], b[:, 8:])  # second sample never sees the first
    assert not torch.allclose(a[:, 8:], c[:, 8:])


def _toy_blocks(seed=0):
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 12, 30)
    ids = np.zeros((30, 12), np.int16)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(2, 40, n)
    return PackedBlocks(ids, lengths, block_len=32, seed=seed), ids, lengths


def test_packing_is_deterministic_and_resumable():
    a, ids, lengths = _toy_blocks()
    b, _, _ = _toy_blocks()
    first = [a.next_batch(3) for _ in range(4)]  # crosses into the second epoch
    assert a.epoch == 1
    for ta, tb in zip(first, [b.next_batch(3) for _ in range(4)]):
        assert torch.equal(ta[0], tb[0]) and torch.equal(ta[1], tb[1])
    c, _, _ = _toy_blocks()
    c.load_state_dict({"epoch": 0, "block": 6})
    torch.testing.assert_close(c.next_batch(3)[0], first[2][0])
    # Every token of epoch 0 comes from a sample, and offsets restart at each sample.
    tokens, offset = first[0]
    assert (offset[0, 1:] == 0).sum() + (offset[0, 1:] == offset[0, :-1] + 1).sum() == 32
    other, _, _ = _toy_blocks(seed=1)
    assert not torch.equal(other.next_batch(3)[0], first[0][0])


def test_loss_weights_and_doc_ids():
    tokens = torch.arange(10)[None].repeat(1, 1)
    offset = torch.tensor([[3, 4, 5, 0, 1, 2, 3, 4, 0, 1]])
    cfg = TrainConfig(loss_on="program", cross_sample_attention=False)
    inputs, targets, weight, doc = batch_inputs(tokens, offset, cfg, prompt_len=3)
    assert weight.tolist() == [[1, 1, 0, 0, 0, 1, 1, 0, 0]]  # targets at offset >= 3
    assert doc.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1, 2]]
    _, _, w_all, d_all = batch_inputs(tokens, offset, TrainConfig(), prompt_len=3)
    assert w_all.sum() == 9 and d_all is None


def test_sample_rows_hold_whole_samples():
    _, ids, lengths = _toy_blocks()
    rows = SampleRows(ids, lengths, row_len=11, seed=0)
    seen = []
    for _ in range(10):  # 30 samples, 3 per batch: exactly one epoch
        tokens, offset = rows.next_batch(3)
        assert tokens.shape == offset.shape == (3, 12)
        for tok, off in zip(tokens, offset):
            n = int((off >= 0).sum())
            assert off[:n].tolist() == list(range(n)) and (off[n:] == -1).all()
            seen.append(tok[:n].tolist())
    assert rows.epoch == 0 and rows.block == 30
    assert sorted(seen) == sorted(ids[i, :n].tolist() for i, n in enumerate(lengths))  # each sample once
    again = SampleRows(ids, lengths, row_len=11, seed=0)
    again.load_state_dict({"epoch": 0, "block": 27})
    torch.testing.assert_close(again.next_batch(3)[0], tokens)
    with pytest.raises(ValueError, match="block_len: 8 is too short"):
        SampleRows(ids, lengths, row_len=8, seed=0)


def test_length_curriculum_rows_stay_under_a_rising_bound():
    _, ids, lengths = _toy_blocks()  # sample lengths 5..11
    rows = SampleRows(ids, lengths, row_len=11, seed=0, curriculum_rows=12)
    assert [rows.length_bound(r) for r in (0, 5, 11)] == [5, 8, 11]
    got = [int((off >= 0).sum()) for _ in range(4) for off in rows.next_batch(3)[1]]
    assert all(n <= rows.length_bound(r) for r, n in enumerate(got)), got
    assert got[0] == 5 and max(got[:4]) < 8  # only the shortest samples at first
    # after the curriculum: the usual epoch-0 order from row 12 on, same as without a curriculum
    plain = SampleRows(ids, lengths, row_len=11, seed=0)
    plain.load_state_dict({"epoch": 0, "block": 12})
    torch.testing.assert_close(rows.next_batch(3)[0], plain.next_batch(3)[0])
    # resuming inside the curriculum draws the same rows
    again = SampleRows(ids, lengths, row_len=11, seed=0, curriculum_rows=12)
    straight = [again.next_batch(3)[0] for _ in range(4)]
    resumed = SampleRows(ids, lengths, row_len=11, seed=0, curriculum_rows=12)
    resumed.load_state_dict({"epoch": 0, "block": 6})
    torch.testing.assert_close(resumed.next_batch(3)[0], straight[2])
    with pytest.raises(ValueError, match="curriculum_steps: needs packing='samples'"):
        TrainConfig(curriculum_steps=10)


def test_length_anneal_draws_the_last_steps_from_long_programs(tmp_path):
    karel.generate_dataset(karel.DataConfig(n_train_generated=200, n_val=2, n_test=2, train_lengths=tuple(range(1, 11))),
                           tmp_path / "d")
    ids, lengths = tokenize(karel.load_split(tmp_path / "d", "train"), karel.Vocab())
    actions = program_actions(lengths)
    assert actions.min() == 1 and actions.max() == 10
    cfg = TrainConfig(packing="samples", block_len=386, batch_size=4, steps=10, anneal_steps=4, anneal_min_actions=8)
    rows, plain = make_stream(ids, lengths, cfg), make_stream(ids, lengths, replace(cfg, anneal_steps=0))
    batches = [rows.next_batch(4) for _ in range(10)]
    for step, (tokens, offset) in enumerate(batches):
        got = program_actions((offset >= 0).sum(1).numpy())
        if step < 6:  # before the anneal: the usual order
            torch.testing.assert_close(tokens, plain.next_batch(4)[0])
        else:
            assert (got >= 8).all(), (step, got)
    assert min(program_actions((o >= 0).sum(1).numpy()).min() for _, o in batches[:6]) < 8
    resumed = make_stream(ids, lengths, cfg)
    resumed.load_state_dict({"epoch": 0, "block": 28})
    torch.testing.assert_close(resumed.next_batch(4)[0], batches[7][0])
    with pytest.raises(ValueError, match="no training sample is eligible"):
        make_stream(ids, lengths, replace(cfg, anneal_min_actions=11))
    with pytest.raises(ValueError, match="anneal_steps: needs packing='samples'"):
        TrainConfig(anneal_steps=10)
    with pytest.raises(ValueError, match="anneal_steps: 20 is more than steps"):
        TrainConfig(packing="samples", steps=10, anneal_steps=20)


def test_spec_pairs_rows_show_the_first_pairs_and_the_program(tmp_path):
    vocab = karel.Vocab()
    karel.generate_dataset(karel.DataConfig(n_train_generated=200, n_val=2, n_test=2, train_lengths=tuple(range(1, 11))),
                           tmp_path / "d")
    ids, lengths = tokenize(karel.load_split(tmp_path / "d", "train"), vocab)
    cfg = TrainConfig(packing="samples", block_len=386, batch_size=4, steps=10, spec_pairs=(1, 3, 5))
    rows = make_stream(ids, lengths, cfg)
    order = np.random.default_rng([cfg.seed, 0]).permutation(len(ids))  # epoch 0's, as with all pairs
    headers = torch.tensor([vocab.id(f"Input{j}") for j in range(5)])
    seen, drawn = 0, set()
    for _ in range(12):
        tokens, offset = rows.next_batch(4)
        real = offset >= 0
        k = int(torch.isin(tokens[0], headers).sum())
        drawn.add(k)
        width = 387 - (5 - k) * karel.text.PAIR_TOKENS
        assert tokens.shape == (4 * 387 // width, width)  # the 4 full rows' tokens, in shorter rows
        for r in range(tokens.shape[0]):
            i = order[seen + r]  # the samples whole rows would show, in the same order
            n = int(lengths[i])
            text = vocab.decode(tokens[r, real[r]].tolist())
            whole = vocab.decode(ids[i, :n].tolist())
            cut = k * karel.text.PAIR_TOKENS
            assert text == whole[:cut] + whole[5 * karel.text.PAIR_TOKENS:], (k, r)
            assert text[cut] == "Code:" and text[-1] == "<eos>"
            # offsets as in the whole sample: exactly the program's targets weigh 1 under "program"
            w = batch_inputs(tokens[r : r + 1], offset[r : r + 1], replace(cfg, loss_on="program"))[2][0]
            assert w.sum() == n - karel.prompt_length()
        seen += tokens.shape[0]
    assert drawn == {1, 3, 5}
    resumed = make_stream(ids, lengths, cfg)
    resumed.load_state_dict(rows.state_dict())
    following = rows.next_batch(4)
    torch.testing.assert_close(resumed.next_batch(4)[0], following[0])
    with pytest.raises(ValueError, match=r"spec_pairs: each must be an int in 1..5"):
        TrainConfig(packing="samples", spec_pairs=(0, 2))
    with pytest.raises(ValueError, match="spec_pairs: needs packing='samples'"):
        TrainConfig(spec_pairs=(2,))
    with pytest.raises(ValueError, match="spec_pairs: cannot be combined with anneal_steps"):
        TrainConfig(packing="samples", spec_pairs=(2,), anneal_steps=1)


def test_padding_and_prompt_weight():
    tokens = torch.arange(8)[None]
    offset = torch.tensor([[0, 1, 2, 3, 4, -1, -1, -1]])
    w = batch_inputs(tokens, offset, TrainConfig(packing="samples", prompt_loss_weight=0.25), prompt_len=3)[2]
    assert w.tolist() == [[0.25, 0.25, 1, 1, 0, 0, 0]]
    w = batch_inputs(tokens, offset, TrainConfig(packing="samples", loss_on="program"), prompt_len=3)[2]
    assert w.tolist() == [[0, 0, 1, 1, 0, 0, 0]]
    with pytest.raises(ValueError, match="prompt_loss_weight"):
        TrainConfig(prompt_loss_weight=2.0)
    with pytest.raises(ValueError, match="packing"):
        TrainConfig(packing="rows")


def test_outputs_loss_skips_exactly_the_input_grid_cells(tmp_path):
    vocab = karel.Vocab()
    karel.generate_dataset(karel.DataConfig(n_train_generated=20, n_val=2, n_test=2), tmp_path / "d")
    ids, lengths = tokenize(karel.load_split(tmp_path / "d", "train", limit=1), vocab)
    n = int(lengths[0])
    tokens = torch.from_numpy(ids[:, :n].astype(np.int64))
    offset = torch.arange(n)[None]
    w = batch_inputs(tokens, offset, TrainConfig(packing="samples", loss_on="outputs"))[2][0]
    names = vocab.decode(ids[0, 1:n])  # the targets; the first, Input0, is never one
    in_input = True
    for name, weight in zip(names, w.tolist()):
        if name.startswith(("Input", "Output", "Code:")):
            in_input = name.startswith("Input")
            assert weight == 1, name
        else:
            assert weight == (0 if in_input else 1), (name, weight)
    assert (w == 0).sum() == 5 * 36
    with pytest.raises(ValueError, match="needs the Karel prompt"):
        batch_inputs(tokens, offset, TrainConfig(packing="samples", loss_on="outputs"), prompt_len=3)


def test_muon_optimizer_covers_every_parameter_once_and_follows_the_schedule():
    m, t = preset("smoke", train={"optimizer": "muon", "muon_lr": 0.02, "lr": 1e-3, "warmup_steps": 2})
    model = Transformer(m)
    opt = make_optimizer(model, t)
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())
    muon, adamw = opt.parts[1], opt.parts[0]
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert all(p.dim() == 2 for g in muon.param_groups for p in g["params"])
    assert not any(p is model.embed.weight or p is model.lm_head.weight for g in muon.param_groups for p in g["params"])
    set_lr(opt, t, 5)
    assert muon.param_groups[0]["lr"] == pytest.approx(0.02 * lr_at(t, 5) / 1e-3)
    assert adamw.param_groups[0]["lr"] == pytest.approx(lr_at(t, 5))
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd")
    plain = make_optimizer(model, replace(t, optimizer="adamw"))
    with pytest.raises(ValueError, match="not a Muon\\+AdamW state"):
        opt.load_state_dict(plain.state_dict())


@pytest.mark.parametrize("shape", [(32, 96), (96, 32)])
def test_float32_newton_schulz_is_torchs_iteration_at_float32(shape):
    """The same orthogonalisation as torch's bf16 one, to bf16's rounding, for wide and tall
    matrices: singular values pulled towards 1 (the quintic's ~0.7-1.2), directions kept."""
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    coefficients, steps, eps = (3.4445, -4.7750, 2.0315), 5, 1e-7
    ours = newton_schulz_float32(g, coefficients, steps, eps)
    theirs = torch_muon._zeropower_via_newtonschulz(g, coefficients, steps, eps).float()
    assert ours.dtype == torch.float32 and ours.shape == g.shape
    assert (ours - theirs).norm() < 0.02 * theirs.norm()  # bf16 rounds ~0.4% an operation
    # U S' V^T with G's own singular vectors and S' near 1, not G's spread of singular values
    u, sv, vh = torch.linalg.svd(g, full_matrices=False)
    core = u.T @ ours @ vh.T
    assert (core - torch.diag(core.diagonal())).abs().max() < 0.05
    assert core.diagonal().min() > 0.3 and core.diagonal().max() < 1.3 and sv.max() / sv.min() > 3


def test_float32_muon_is_torchs_step_with_the_float32_iteration(monkeypatch):
    """Bit for bit torch's Muon step with the float32 iteration in place of the bf16 one (weight
    decay, Nesterov momentum, the shape's lr adjustment), without touching torch's module: a
    torch Muon stepping meanwhile in another thread must keep its bf16 iteration."""
    import model.optim as optim

    def params():
        g = torch.Generator().manual_seed(1)
        return [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in ((24, 40), (40, 24))]

    ours, theirs = params(), params()
    kwargs = dict(lr=0.02, weight_decay=0.1, momentum=0.9)
    float32_muon, torch_muon_opt = Float32Muon(ours, **kwargs), torch.optim.Muon(theirs, **kwargs)
    original = torch_muon._zeropower_via_newtonschulz
    seen = []

    def watched(*args):
        seen.append(torch_muon._zeropower_via_newtonschulz is original)
        return newton_schulz_float32(*args)

    monkeypatch.setattr(optim, "newton_schulz_float32", watched)
    for step in range(3):
        g = torch.Generator().manual_seed(10 + step)
        for a, b in zip(ours, theirs):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        float32_muon.step()
        with monkeypatch.context() as swap:  # torch's step, its iteration swapped here, in the test
            swap.setattr(torch_muon, "_zeropower_via_newtonschulz", newton_schulz_float32)
            torch_muon_opt.step()
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert seen == [True] * 6  # two matrices, three steps; torch's own iteration stayed in place


@pytest.mark.parametrize("isa, expected", [(["avx2"], Float32Muon), (["avx512_bf16", "avx512f", "avx2"], torch.optim.Muon)])
def test_muon_iterates_in_float32_only_where_the_cpu_would_emulate_bf16(monkeypatch, isa, expected):
    monkeypatch.setattr(machine, "cpu_identity", lambda: {"cpu": "Test CPU", "cpu_isa": isa})
    m, t = preset("smoke", train={"optimizer": "muon"})
    model = Transformer(m)
    opt = make_optimizer(model, t)
    assert type(opt.parts[1]) is expected
    loss = model(torch.randint(0, m.vocab_size, (2, 16)))[0].float().square().mean()
    loss.backward()
    before = [p.detach().clone() for g in opt.parts[1].param_groups for p in g["params"]]
    original = torch_muon._zeropower_via_newtonschulz
    opt.step()
    assert torch_muon._zeropower_via_newtonschulz is original  # torch's own is back after the step
    after = [p for g in opt.parts[1].param_groups for p in g["params"]]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))


def test_phase_rule():
    steps = [0, 10, 20, 40, 80, 160, 320]
    rows = [
        {"step": s, "diversity": d, "acc_spec": a, "parse_rate": p}
        for s, d, a, p in zip(steps, [0.01, 0.02, 0.3, 0.6, 0.7, 0.7, 0.72],
                              [0.0, 0.0, 0.05, 0.1, 0.15, 0.6, 0.9], [0, 0.1, 0.6, 0.9, 1, 1, 1])
    ]
    ph = label_phases(rows)
    assert ph.syntax_start == 40 and ph.semantics_start == 160
    assert ph.labels == ["babbling"] * 3 + ["syntax"] * 2 + ["semantics"] * 2
    flat = [{"step": s, "diversity": 0.01, "acc_spec": 0.0} for s in steps]
    assert label_phases(flat).labels == ["babbling"] * 7
    with pytest.raises(ValueError, match="acc_spec"):
        label_phases([{"step": 0, "diversity": 0.1}])
    # a parse rate not measured at one checkpoint (NaN or None) does not hold syntax back there
    for unmeasured in (float("nan"), None):
        gaps = [dict(r, parse_rate=unmeasured) if r["step"] == 40 else r for r in rows]
        assert label_phases(gaps).syntax_start == 40
    with pytest.raises(ValueError, match=r"'diversity' is not a number at checkpoint step\(s\) \[80\]"):
        label_phases([dict(r, diversity=float("nan")) if r["step"] == 80 else r for r in rows])


def test_a_model_writing_a_few_programs_is_still_babbling():
    """Parsing output and a diversity near its (tiny) maximum are not syntax when the model
    writes 1-3 programs for 300 specs; a rise of exactly min_rise (0.2 -> 0.3) is semantics."""
    steps = [0, 22, 106, 500, 1000]
    few = [{"step": s, "diversity": d, "acc_spec": a, "parse_rate": 1.0}
           for s, d, a in zip(steps, [1 / 300, 2 / 300, 3 / 300, 3 / 300, 3 / 300], [0.017, 0.02, 0.05, 0.1, 0.14])]
    ph = label_phases(few)
    assert ph.syntax_start is None and ph.semantics_start is None
    rows = [{"step": s, "diversity": d, "acc_spec": a}
            for s, d, a in zip(steps, [0.01, 0.1, 0.4, 0.4, 0.4], [0.0, 0.1, 0.2, 0.25, 0.3])]
    assert label_phases(rows).syntax_start == 106 and label_phases(rows).semantics_start == 500
