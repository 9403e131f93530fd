"""Decoding: hidden-state alignment, cache agreement, the grammar, and generation metrics."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import karel
from model.config import ModelConfig
from model.decode import (MAX_ACTIONS, Generation, forced_hidden, forced_states, generate, generate_modes,
                          program_tokens, spec_prompts)
from model.metrics import correct_pairs, correct_states, evaluate_checkpoint, generation_metrics, perplexity
from model.transformer import Transformer

VOCAB = karel.Vocab()
CFG = ModelConfig(vocab_size=48, n_layer=2, d_model=32, n_head=4, rotary_dim=4, d_mlp=64, context=512)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tmp_path_factory.mktemp("karel") / "data"
    karel.generate_dataset(karel.DataConfig(seed=5, n_train_generated=20, n_val=12, n_test=24), path)
    return karel.load_split(path, "test"), karel.load_split(path, "val")


def _model(seed, actions_bias=0.0, sharpen=1.0, cells=False):
    """A random model; ``sharpen`` scales attention so outputs depend on the spec (a plain
    random init writes the same program for every spec, which would test little)."""
    torch.manual_seed(seed)
    model = Transformer(replace(CFG, cell_embeddings=cells)).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)  # make greedy choices depend on the context
        for block in model.blocks:
            block.attn.qkv.weight.mul_(sharpen)
            block.attn.out.weight.mul_(5.0 if sharpen > 1 else 1.0)
        model.lm_head.bias[torch.as_tensor(VOCAB.action_ids.astype(np.int64))] += actions_bias
    return model


@pytest.mark.parametrize(
    "mode,seed,sharpen,cells", [("constrained", 2, 15.0, False), ("greedy", 1, 5.0, False), ("constrained", 2, 15.0, True)]
)
def test_hidden_states_align_with_teacher_forcing(data, mode, seed, sharpen, cells):
    test, _ = data
    model = _model(seed, sharpen=sharpen, cells=cells)
    gen = generate(model, test, VOCAB, mode, batch_size=7, keep_layers=True)
    assert gen.programs.shape == (24, MAX_ACTIONS) and gen.hidden.shape == (24, MAX_ACTIONS, CFG.d_model)
    assert gen.hidden_layers.shape == (24, MAX_ACTIONS, CFG.n_layer + 1, CFG.d_model)
    assert gen.hidden.dtype == np.float16 and gen.programs.dtype == np.int8
    # The check needs variety: distinct programs (constrained), a mix of lengths (greedy).
    assert len({p.tobytes() for p in gen.programs}) > (5 if mode == "constrained" else 1)
    assert gen.lengths.max() == MAX_ACTIONS
    assert mode == "constrained" or (gen.lengths == 0).any()
    prompts = torch.from_numpy(spec_prompts(test, VOCAB))
    seq = torch.cat([prompts, torch.from_numpy(program_tokens(gen.programs, VOCAB))], dim=1)
    with torch.no_grad():
        logits, hidden = model(seq, return_hidden=True)
    states = torch.stack(hidden, dim=2)  # (P, T, n_layer+1, d)
    t0 = prompts.shape[1]
    allowed = np.append(VOCAB.action_ids, VOCAB.id("}"))
    for p in range(len(test)):
        n = int(gen.lengths[p])
        for j in range(n):
            pos = t0 - 1 + j  # the "{" for j = 0, action j-1 for j > 0
            want = states[p, pos]
            np.testing.assert_allclose(gen.hidden_layers[p, j], want.numpy(), atol=2e-3, rtol=2e-3)
            np.testing.assert_allclose(gen.hidden[p, j], want.mean(0).numpy(), atol=2e-3, rtol=2e-3)
            scores = logits[p, pos].numpy()
            choice = allowed[np.argmax(scores[allowed])] if mode == "constrained" else np.argmax(scores)
            assert choice == VOCAB.action_ids[gen.programs[p, j]]  # these logits emitted action j
        assert not gen.hidden[p, n:].any() and (gen.programs[p, n:] == -1).all()


def test_forced_hidden_reproduces_the_writers_states_and_reads_others(data):
    """Teacher forcing a model on its own programs gives generate's states; another model on the
    same programs gives its own states at the same positions (the random-init control)."""
    test, _ = data
    writer, other = _model(2, sharpen=15.0), _model(3, sharpen=15.0)
    gen = generate(writer, test, VOCAB, "constrained", batch_size=7)
    assert len({p.tobytes() for p in gen.programs}) > 5  # varied programs, not one repeated
    own = forced_hidden(writer, test, gen.programs, VOCAB, batch_size=5)
    assert own.shape == gen.hidden.shape and own.dtype == np.float16
    np.testing.assert_allclose(own.astype(np.float32), gen.hidden.astype(np.float32), atol=2e-3, rtol=2e-3)
    theirs = forced_hidden(other, test, gen.programs, VOCAB)
    assert not np.allclose(theirs, own, atol=1e-2)
    short = gen.programs.copy()
    short[:, 2:] = -1  # two actions each: the rest must be zero, the first two unchanged
    cut = forced_hidden(other, test, short, VOCAB)
    np.testing.assert_array_equal(cut[:, :2], theirs[:, :2])
    assert not cut[:, 2:].any()
    with pytest.raises(ValueError, match="programs"):
        forced_hidden(other, test, gen.programs[:, :5], VOCAB)


def test_forced_states_keep_every_layer_as_decoding_does(data):
    """The per-layer states of teacher forcing line up with ``generate``'s ``hidden_layers`` (the
    activations stage's ``programs="reference"`` keeps them for per-layer curves)."""
    test, _ = data
    writer = _model(2, sharpen=15.0)
    gen = generate(writer, test, VOCAB, "constrained", batch_size=7, keep_layers=True)
    mean, layers = forced_states(writer, test, gen.programs, VOCAB, batch_size=5, keep_layers=True)
    assert layers.shape == gen.hidden_layers.shape and layers.dtype == np.float16
    np.testing.assert_allclose(layers.astype(np.float32), gen.hidden_layers.astype(np.float32), atol=3e-3, rtol=3e-3)
    np.testing.assert_array_equal(mean, forced_hidden(writer, test, gen.programs, VOCAB, batch_size=5))
    assert forced_states(writer, test, gen.programs, VOCAB)[1] is None
    empty = gen.programs.copy()
    empty[:4] = -1  # programs of no action: nothing kept, in the mean or in any layer
    _, cut = forced_states(writer, test, empty, VOCAB, keep_layers=True)
    assert not cut[:4].any() and cut[4:].any()


def test_bf16_forced_hidden_matches_bf16_decoding(data):
    """The activations stage's ``bf16`` option: under bf16 autocast the teacher-forced states
    still line up with the decoded ones (to bf16 rounding), and autocast really is applied."""
    test, _ = data
    writer = _model(2, sharpen=15.0)
    gen = generate(writer, test, VOCAB, "constrained", batch_size=7, autocast=True)
    own = forced_hidden(writer, test, gen.programs, VOCAB, batch_size=5, autocast=True)
    exact = forced_hidden(writer, test, gen.programs, VOCAB, batch_size=5, autocast=False)
    scale = np.abs(exact.astype(np.float32)).max()
    np.testing.assert_allclose(own.astype(np.float32), gen.hidden.astype(np.float32), atol=0.02 * scale)
    assert not np.array_equal(own, exact)  # bf16 rounding shows: autocast was on
    np.testing.assert_allclose(own.astype(np.float32), exact.astype(np.float32), atol=0.05 * scale)


def _biased(token_bias):
    model = _model(1)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        for tok, b in token_bias.items():
            model.lm_head.bias[VOCAB.id(tok)] = b
    return model


def test_constrained_grammar(data):
    test, _ = data
    # The model wants an illegal token: constrained decoding still writes only actions.
    gen = generate(_biased({"<pad>": 9.0, "move": 2.0}), test, VOCAB, "constrained")
    assert (gen.programs == karel.ACTION_ID["move"]).all() and (gen.lengths == MAX_ACTIONS).all()
    assert not gen.ended.any() and gen.parsed.all()  # "}" was forced at the 15th slot
    greedy = generate(_biased({"<pad>": 9.0, "move": 2.0}), test, VOCAB, "greedy")
    assert not greedy.parsed.any() and (greedy.lengths == 0).all()
    closing = generate(_biased({"}": 5.0}), test, VOCAB, "constrained")
    assert (closing.lengths == 0).all() and closing.ended.all()
    # Any random model: only action ids or padding, padding only after the end.
    gen = generate(_model(2), test, VOCAB, "constrained", batch_size=5)
    assert np.isin(gen.programs, [-1, 0, 1, 2, 3, 4]).all()
    assert ((gen.programs >= 0).sum(1) == gen.lengths).all()
    assert (np.diff((gen.programs >= 0).astype(int), axis=1) <= 0).all()
    with pytest.raises(ValueError, match="mode"):
        generate(_model(2), test, VOCAB, "beam")


class _ClosesAfter(Transformer):
    """A model that writes ``move`` for its first ``n`` action slots and then chooses ``}``."""

    def __init__(self, n: int):
        torch.manual_seed(0)
        super().__init__(CFG)
        self.n, self.calls = n, 0

    def forward(self, *args, **kwargs):
        logits, states = super().forward(*args, **kwargs)
        self.calls += 1  # call k emits action slot k - 1 (the first reads the prompt)
        want = "move" if self.calls <= self.n else "}"
        logits = logits.clone()
        logits[..., VOCAB.id(want)] += 100.0
        return logits, states


def test_a_close_chosen_at_the_fifteenth_slot_counts_as_ended(data):
    """After 14 actions constrained decoding writes ``}`` whatever the model chose; the program
    counts as ended only when the model chose it, as greedy decoding counts it."""
    test, _ = data
    for mode in ("constrained", "greedy"):
        gen = generate(_ClosesAfter(MAX_ACTIONS).eval(), test, VOCAB, mode, batch_size=len(test))
        assert (gen.lengths == MAX_ACTIONS).all() and gen.ended.all() and gen.parsed.all(), mode
    forced = generate(_ClosesAfter(MAX_ACTIONS + 1).eval(), test, VOCAB, "constrained", batch_size=len(test))
    assert (forced.lengths == MAX_ACTIONS).all() and not forced.ended.any() and forced.parsed.all()
    early = generate(_ClosesAfter(3).eval(), test, VOCAB, "constrained", batch_size=len(test))
    assert (early.lengths == 3).all() and early.ended.all()


def test_decoding_without_cache_agrees(data):
    test, _ = data
    model = _model(3)
    a = generate(model, test, VOCAB, "constrained", use_cache=True)
    b = generate(model, test, VOCAB, "constrained", use_cache=False)
    assert np.array_equal(a.programs, b.programs)
    np.testing.assert_allclose(a.hidden.astype(np.float32), b.hidden.astype(np.float32), atol=2e-3)


@pytest.mark.parametrize("modes,use_cache", [(("constrained", "greedy"), True), (("greedy", "constrained"), True),
                                              (("constrained", "greedy"), False)])
def test_modes_from_one_prompt_pass_are_separate_calls_bit_for_bit(data, modes, use_cache):
    """Evaluation decodes both modes from one pass over each batch's prompts; each mode must be
    what its own call writes (programs, hidden states, every layer), whichever mode goes first."""
    test, _ = data
    model = _model(1, sharpen=5.0)  # greedy writes a mix of lengths, constrained other programs
    both = generate_modes(model, test, VOCAB, modes, batch_size=7, keep_layers=True, use_cache=use_cache)
    for mode in modes:
        alone = generate(model, test, VOCAB, mode, batch_size=7, keep_layers=True, use_cache=use_cache)
        for field in ("programs", "lengths", "ended", "parsed", "hidden", "hidden_layers"):
            assert np.array_equal(getattr(both[mode], field), getattr(alone, field)), (mode, field)
    assert not np.array_equal(both["constrained"].programs, both["greedy"].programs)  # the test can tell them apart
    with pytest.raises(ValueError, match="'beam' is not one of"):
        generate_modes(model, test, VOCAB, ("constrained", "beam"))


def test_correct_means_the_text_matches_as_in_the_paper():
    """A program that differs from the reference only in the markers under the robot's final
    cell is correct by the paper's check (its code compares the drawn grids, where the robot
    glyph hides them) and wrong by the whole-state check; anything the text shows counts for both."""
    rng = np.random.default_rng(3)
    inputs = karel.random_worlds(rng, 10)
    put, move = karel.ACTION_ID["put_marker"], karel.ACTION_ID["move"]
    reference = np.array([[put]], np.int8)  # a marker lands under the robot, which stays put
    outputs = karel.output_worlds(karel.execute_batch(reference, inputs))
    spec = karel.Samples(np.array([0]), reference, inputs, outputs)
    nothing, moved = np.full((1, 1), -1, np.int8), np.array([[move]], np.int8)
    assert correct_pairs(nothing, spec, VOCAB).all()          # the text cannot tell them apart
    assert not correct_states(nothing, spec).any()            # the world state can
    assert not correct_pairs(nothing, spec, karel.Vocab(robot_markers="show")).any()  # nor can that text
    assert correct_pairs(reference, spec, VOCAB).all() and correct_states(reference, spec).all()
    after = karel.output_worlds(karel.execute_batch(moved, inputs))
    blocked = (after.row == inputs.row) & (after.col == inputs.col)
    assert 0 < blocked.sum() < 10
    # a move that happens is visible; one into a wall leaves the text as the reference's
    assert (correct_pairs(moved, spec, VOCAB)[0] == blocked).all()
    gen = Generation(nothing, np.zeros(1, np.int64), np.ones(1, bool), np.ones(1, bool),
                     np.zeros((1, MAX_ACTIONS, 4), np.float16))
    m = generation_metrics(gen, spec, VOCAB)
    assert m["acc_spec"] == m["acc_all"] == 1.0 and m["acc_spec_state"] == m["acc_all_state"] == 0.0


def test_metrics_on_reference_programs(data):
    test, val = data
    programs = np.full((len(test), MAX_ACTIONS), -1, np.int8)
    programs[:, : test.programs.shape[1]] = test.programs
    lengths = (programs >= 0).sum(1)
    gen = Generation(programs, lengths, np.ones(len(test), bool), np.ones(len(test), bool),
                     np.zeros((len(test), MAX_ACTIONS, 4), np.float16))
    m = generation_metrics(gen, test, VOCAB)
    assert m["acc_spec"] == 1.0 and m["acc_all"] == 1.0
    assert all(m[f"acc_all_len{n}"] == 1.0 for n in set(lengths.tolist()))
    assert m["gen_len_mean"] == m["ref_len_mean"] == lengths.mean()
    assert m["n_specs"] == len(test) and m["n_specs_len6_10"] == (lengths >= 6).sum() > 0
    assert m["diversity"] == len({p.tobytes() for p in programs}) / len(test)
    # An empty program is right only where output == input.
    empty = Generation(np.full_like(programs, -1), np.zeros_like(lengths), gen.ended, gen.parsed, gen.hidden)
    ok = correct_pairs(empty.programs, test, VOCAB)
    assert generation_metrics(empty, test, VOCAB)["acc_all"] == ok.all(1).mean() < 1.0
    assert generation_metrics(empty, test, VOCAB)["diversity"] == 1 / len(test)
    with pytest.raises(ValueError, match="programs"):
        correct_pairs(programs[:3], test, VOCAB)
    model = _model(4)
    out = evaluate_checkpoint(model, VOCAB, test, val, batch_size=8)
    for key in ("acc_spec", "acc_all", "ppl_all", "ppl_program", "diversity", "parse_rate", "gen_len_mean"):
        assert isinstance(out[key], float), key
    ppl = perplexity(model, val, VOCAB, batch_size=5)
    assert ppl == pytest.approx(perplexity(model, val, VOCAB, batch_size=12))  # padding-independent
    # The 6..10 figure is the program perplexity of exactly the val samples with >= 6 actions.
    long = (val.programs >= 0).sum(1) >= 6
    assert 0 < long.sum() < len(val)
    rows = (np.flatnonzero(long)[:, None] * val.n_worlds + np.arange(val.n_worlds)).ravel()
    pick = lambda wb: karel.WorldBatch(wb.walls[rows], wb.markers[rows], wb.row[rows], wb.col[rows], wb.dir[rows])
    sub = karel.Samples(val.ids[long], val.programs[long], pick(val.inputs), pick(val.outputs))
    only_long = perplexity(model, sub, VOCAB, batch_size=5)
    assert only_long["ppl_program"] == pytest.approx(ppl["ppl_program_len6_10"])
    assert only_long["ppl_program_len6_10"] == pytest.approx(ppl["ppl_program_len6_10"])
    assert ppl["ppl_program"] != pytest.approx(ppl["ppl_program_len6_10"])
