import numpy as np
import pytest

import karel
from karel.text import grid_ids, tokens_to_text


def sample(seed=0, n_worlds=5, robot_on_marker=False):
    rng = np.random.default_rng(seed)
    prog = ["move", "put_marker", "turn_left", "move", "pick_marker"]
    inputs = [karel.random_world(rng) for _ in range(n_worlds)]
    if robot_on_marker:
        inputs[0].markers[inputs[0].row, inputs[0].col] = 2
    outputs = [karel.execute(prog, w)[-1] for w in inputs]
    return inputs, outputs, prog


def test_format_layout_and_token_count():
    inputs, outputs, prog = sample()
    text = karel.format_sample(inputs, outputs, prog)
    lines = text.splitlines()
    assert lines[0] == "Input0" and lines[7] == "Output0" and lines[14] == "Input1"
    assert all(len(l.split()) == 6 for l in lines[1:7])
    assert lines[-len(prog) - 3 :] == ["Code:", "def run() {", *prog, "}"]
    tokens = text.split()
    # 10 headers + 10 grids x 36 cells + Code: def run() { + program + }
    assert len(tokens) == 10 + 360 + 4 + len(prog) + 1
    assert karel.prompt_length() == 374


def test_round_trip_text_tokens_ids():
    inputs, outputs, prog = sample(seed=1)
    vocab = karel.Vocab()
    text = karel.format_sample(inputs, outputs, prog, vocab)
    ids = vocab.encode(text.split())
    assert tokens_to_text(vocab.decode(ids)) == text
    ins, outs, p = karel.parse_sample(text, vocab)
    assert p == prog
    assert ins == inputs  # input worlds have no marker under the robot: lossless
    for o, want in zip(outs, outputs):
        hidden = want.copy()
        hidden.markers[hidden.row, hidden.col] = 0  # the robot glyph hides its cell's markers
        assert o == hidden


def test_robot_marker_modes():
    inputs, outputs, prog = sample(seed=2, robot_on_marker=True)
    hide, show = karel.Vocab("hide"), karel.Vocab("show")
    assert karel.parse_sample(karel.format_sample(inputs, outputs, prog, hide), hide)[0][0] != inputs[0]
    ins, outs, _ = karel.parse_sample(karel.format_sample(inputs, outputs, prog, show), show)
    assert ins == inputs and outs == outputs  # combined tokens keep the count: lossless
    with pytest.raises(ValueError, match="robot_markers"):
        karel.Vocab("maybe")


def test_batch_encoding_matches_text():
    rng = np.random.default_rng(4)
    programs = karel.random_programs(rng, np.array([1, 6, 10]))
    worlds = karel.random_worlds(rng, 3 * 10)
    outs = karel.output_worlds(karel.execute_batch(programs, worlds))
    vocab = karel.Vocab()
    ids, lengths = karel.encode_samples(worlds, outs, programs, vocab)
    for p in range(3):
        text = karel.format_sample(
            [worlds[p * 10 + i] for i in range(5)], [outs[p * 10 + i] for i in range(5)], programs[p][programs[p] >= 0], vocab
        )
        want = text.split() + ["<eos>"]
        assert vocab.decode(ids[p, : lengths[p]]) == want
        assert (ids[p, lengths[p] :] == vocab.id("<pad>")).all()


def test_parse_errors_name_line_and_token():
    inputs, outputs, prog = sample(seed=3)
    text = karel.format_sample(inputs, outputs, prog)
    lines = text.splitlines()
    bad = lines.copy()
    bad[2] = "# . X . . ."
    with pytest.raises(ValueError, match=r"line 3: bad cell token 'X'"):
        karel.parse_sample("\n".join(bad))
    bad = lines.copy()
    bad[-2] = "jump"
    with pytest.raises(ValueError, match=r"unknown action token 'jump'"):
        karel.parse_sample("\n".join(bad))
    bad = lines.copy()
    bad[3] = ". . . . ."
    with pytest.raises(ValueError, match="line 4: a grid line needs 6 cells"):
        karel.parse_sample("\n".join(bad))
    with pytest.raises(ValueError, match="unknown token 'wall'"):
        karel.Vocab().encode(["Input0", "wall"])
    with pytest.raises(ValueError, match="token id 999"):
        karel.Vocab().decode([999])


def test_grid_ids_reject_unrepresentable_counts():
    wb = karel.random_worlds(np.random.default_rng(0), 1)
    wb.markers[0, 2, 2] = 16
    wb.walls[0, 2, 2] = False
    with pytest.raises(ValueError, match="markers"):
        grid_ids(wb, karel.Vocab())
