"""Generation metrics of one checkpoint, as a flat dict of floats (one row per checkpoint).

Keys (``L`` is a reference program length):
  ``acc_spec``, ``acc_spec_len{L}``   program maps all 5 spec inputs to their outputs, compared as
                                      the text shows them (the paper's check, ``correct_pairs``)
  ``acc_all``, ``acc_all_len{L}``     ... and the held-out pairs too (all 10 with the paper data)
  ``acc_spec_len6_10``, ``acc_all_len6_10``  over the specs of the paper's training lengths 6..10
  ``acc_spec_state``, ``acc_all_state``, ``acc_*_len6_10_state``  the same, comparing the whole
                                      world state: also the markers under the robot, which the
                                      default text hides
  ``ppl_all``, ``ppl_program``        val perplexity over all tokens / program tokens only
  ``diversity``                       distinct generated programs / specs
  ``gen_len_mean``, ``ref_len_mean``  mean generated vs reference length (and for correct ones)
  ``ended_rate``                      share of constrained programs closed by the model itself
  ``n_specs``, ``n_specs_len6_10``    how many test specs the accuracies are over (all / 6..10)
  ``parse_rate``                      share of unconstrained greedy outputs that parse
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

import karel

from .decode import Generation, generate_modes
from .transformer import Transformer

MIN_TRAIN_LENGTH = 6  # the paper's headline accuracy is on specs of the training lengths 6..10


def _outputs(programs: np.ndarray, samples: karel.Samples) -> karel.WorldBatch:
    programs = np.asarray(programs)
    if len(programs) != len(samples):
        raise ValueError(f"programs: {len(programs)} programs for {len(samples)} specs")
    return karel.output_worlds(karel.execute_batch(programs, samples.inputs))


def _text_match(got: karel.WorldBatch, samples: karel.Samples, vocab: karel.Vocab) -> np.ndarray:
    same = (karel.grid_ids(got, vocab) == karel.grid_ids(samples.outputs, vocab)).all(axis=1)
    return same.reshape(len(samples), -1)


def _state_match(got: karel.WorldBatch, samples: karel.Samples) -> np.ndarray:
    want = samples.outputs
    same = (
        (got.markers == want.markers).all(axis=(1, 2))
        & (got.row == want.row) & (got.col == want.col) & (got.dir == want.dir)
    )
    return same.reshape(len(samples), -1)


def correct_pairs(programs: np.ndarray, samples: karel.Samples, vocab: karel.Vocab) -> np.ndarray:
    """(P, W) bool: program p turns input world w of spec p into a world whose grid reads, in
    ``vocab``'s text, exactly as its output grid does. This is the paper's check (its reference
    code compares the drawn grids). Under ``robot_markers="hide"`` the robot glyph hides the
    markers under it, so a program that differs only there is correct: the model cannot see them.
    """
    return _text_match(_outputs(programs, samples), samples, vocab)


def correct_states(programs: np.ndarray, samples: karel.Samples) -> np.ndarray:
    """(P, W) bool: as ``correct_pairs``, comparing the whole world state (markers under the
    robot included): stricter than the paper's check when the text hides them."""
    return _state_match(_outputs(programs, samples), samples)


def generation_metrics(
    gen: Generation, samples: karel.Samples, vocab: karel.Vocab, n_spec: int = 5
) -> dict[str, float]:
    """Accuracy (by reference length), diversity and lengths of constrained generations.

    The programs run once; both checks read the same output worlds.
    """
    got = _outputs(gen.programs, samples)
    ok = _text_match(got, samples, vocab)
    spec_ok = ok[:, :n_spec].all(axis=1)
    all_ok = ok.all(axis=1)
    ref_len = (samples.programs >= 0).sum(axis=1)
    long = ref_len >= MIN_TRAIN_LENGTH
    out = {
        "acc_spec": float(spec_ok.mean()),
        "acc_all": float(all_ok.mean()),
        "diversity": len({p.tobytes() for p in np.asarray(gen.programs, np.int8)}) / len(gen),
        "gen_len_mean": float(gen.lengths.mean()),
        "ref_len_mean": float(ref_len.mean()),
        "gen_len_correct_mean": float(gen.lengths[spec_ok].mean()) if spec_ok.any() else math.nan,
        "ref_len_correct_mean": float(ref_len[spec_ok].mean()) if spec_ok.any() else math.nan,
        "ended_rate": float(np.mean(gen.ended)),
        "n_specs": float(len(gen)),
        "n_specs_len6_10": float(long.sum()),
    }
    for n in np.unique(ref_len):
        sel = ref_len == n
        out[f"acc_spec_len{n}"] = float(spec_ok[sel].mean())
        out[f"acc_all_len{n}"] = float(all_ok[sel].mean())
    state = _state_match(got, samples)
    out["acc_spec_state"] = float(state[:, :n_spec].all(axis=1).mean())
    out["acc_all_state"] = float(state.all(axis=1).mean())
    for suffix, match in (("", ok), ("_state", state)):
        out[f"acc_spec_len6_10{suffix}"] = float(match[long, :n_spec].all(axis=1).mean()) if long.any() else math.nan
        out[f"acc_all_len6_10{suffix}"] = float(match[long].all(axis=1).mean()) if long.any() else math.nan
    return out


@torch.no_grad()
def perplexity(model: Transformer, samples: karel.Samples, vocab: karel.Vocab, batch_size: int = 64) -> dict[str, float]:
    """Per-sample (no packing) val perplexity: over all tokens, over program tokens only, and over
    the program tokens of programs with 6..10 actions (the training lengths of the paper).

    Program tokens are the targets after the prompt: the actions, ``}`` and ``<eos>``. Val holds
    lengths 1..10: a model trained on 6..10 puts little mass on an early ``}``, so its program
    perplexity over all lengths can rise while it learns; ``ppl_program_len6_10`` does not mix
    that in.
    """
    ids, lengths = karel.encode_samples(samples.inputs, samples.outputs, samples.programs, vocab)
    ids = torch.from_numpy(ids.astype(np.int64))
    lengths = torch.from_numpy(lengths.astype(np.int64))
    long_program = torch.from_numpy((samples.programs >= 0).sum(1) >= MIN_TRAIN_LENGTH)
    device = next(model.parameters()).device
    prompt = karel.prompt_length()
    was_training = model.training
    model.eval()
    sums = {"all": [0.0, 0.0], "program": [0.0, 0.0], "program_len6_10": [0.0, 0.0]}
    for lo in range(0, len(ids), batch_size):
        x = ids[lo : lo + batch_size, : int(lengths[lo : lo + batch_size].max())].to(device)
        n = lengths[lo : lo + batch_size].to(device)
        logits, _ = model(x[:, :-1])
        nll = F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:], reduction="none")
        pos = torch.arange(1, x.shape[1], device=device)[None, :]  # index of each target
        real = pos < n[:, None]
        prog = real & (pos >= prompt)
        for name, sel in (("all", real), ("program", prog),
                          ("program_len6_10", prog & long_program[lo : lo + batch_size, None].to(device))):
            sums[name][0] += float(nll[sel].sum())
            sums[name][1] += float(sel.sum())
    model.train(was_training)
    return {f"ppl_{name}": math.exp(total / count) for name, (total, count) in sums.items() if count}


DECODING_MODES = ("constrained", "greedy")


def decoding_metrics(gens: dict[str, Generation], test: karel.Samples, vocab: karel.Vocab) -> dict[str, float]:
    """The decoding half of ``evaluate_checkpoint``, from its Generations by mode
    (``DECODING_MODES``): the constrained programs' metrics, and the greedy ones' parse rate and
    accuracy (a program that does not parse counts as wrong)."""
    out = generation_metrics(gens["constrained"], test, vocab)
    greedy = gens["greedy"]
    out["parse_rate"] = float(greedy.parsed.mean())
    out["greedy_acc_spec"] = float((correct_pairs(greedy.programs, test, vocab)[:, :5].all(axis=1) & greedy.parsed).mean())
    return out


def evaluate_checkpoint(
    model: Transformer,
    vocab: karel.Vocab,
    test: karel.Samples,
    val: karel.Samples | None = None,
    batch_size: int = 256,
) -> dict[str, float]:
    """All metrics of one model: constrained and greedy decoding on ``test``, perplexity on ``val``."""
    out = decoding_metrics(generate_modes(model, test, vocab, DECODING_MODES, batch_size=batch_size), test, vocab)
    if val is not None:
        out.update(perplexity(model, val, vocab, batch_size=max(batch_size // 4, 1)))
    return out
