"""The text the language model reads: the specification grids, then the program.

Layout of one sample (whitespace separates tokens; the vocabulary is word-level)::

    Input0            # then 6 lines of 6 cell tokens: the 6x6 interior in row order
    Output0
    ...               # Input1/Output1 .. Input4/Output4
    Code:
    def run() {
    move              # one action per line
    }

Cell tokens: ``#`` wall, ``.`` empty, ``^ > v <`` the robot facing north/east/south/west,
``1`` .. ``15`` a marker count. By default the robot glyph hides any markers under it, as in
the paper's text (``robot_markers="hide"``, lossy). ``robot_markers="show"`` uses combined
tokens such as ``^2`` (robot facing north on two markers) and keeps one token per cell.
A language-model sample is the tokens above followed by ``<eos>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .semantics import ACTIONS, parse_program
from .world import DIRECTIONS, SIZE, World, WorldBatch

N_SPEC = 5  # input/output pairs shown to the model
MAX_MARKERS = 15  # largest count with a token (1 marker + 14 puts)
GRID_CELLS = (SIZE - 2) ** 2  # interior cells per world, one token each (36)
PAIR_TOKENS = 2 * (1 + GRID_CELLS)  # Input{k} header + cells, Output{k} header + cells
ROBOT_GLYPHS = ("^", ">", "v", "<")  # by direction id: north, east, south, west
WALL, EMPTY = "#", "."
PROGRAM_OPEN = ("Code:", "def", "run()", "{")
PROGRAM_CLOSE = "}"
PAD_TOKEN, EOS_TOKEN = "<pad>", "<eos>"
ROBOT_MARKER_MODES = ("hide", "show")


@dataclass(frozen=True)
class Vocab:
    """Word-level vocabulary; ids are stable for a given ``robot_markers`` mode."""

    robot_markers: str = "hide"

    def __post_init__(self):
        if self.robot_markers not in ROBOT_MARKER_MODES:
            raise ValueError(
                f"robot_markers: {self.robot_markers!r} is not one of {ROBOT_MARKER_MODES}"
            )

    @cached_property
    def tokens(self) -> tuple[str, ...]:
        toks = [PAD_TOKEN, EOS_TOKEN]
        for i in range(N_SPEC):
            toks += [f"Input{i}", f"Output{i}"]
        toks += [*PROGRAM_OPEN, PROGRAM_CLOSE, *ACTIONS, WALL, EMPTY, *ROBOT_GLYPHS]
        toks += [str(k) for k in range(1, MAX_MARKERS + 1)]
        if self.robot_markers == "show":
            toks += [g + str(k) for g in ROBOT_GLYPHS for k in range(1, MAX_MARKERS + 1)]
        return tuple(toks)

    @cached_property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def id(self, token: str) -> int:
        try:
            return self.index[token]
        except KeyError:
            raise ValueError(f"unknown token {token!r} (not in the {self.robot_markers!r} vocabulary)") from None

    def encode(self, tokens) -> np.ndarray:
        return np.array([self.id(t) for t in tokens], dtype=np.int16)

    def decode(self, ids) -> list[str]:
        n = len(self.tokens)
        out = []
        for i in ids:
            if not 0 <= int(i) < n:
                raise ValueError(f"token id {int(i)} is outside the vocabulary (size {n})")
            out.append(self.tokens[int(i)])
        return out

    @cached_property
    def action_ids(self) -> np.ndarray:
        """Vocabulary id of each action, indexed by action id."""
        return np.array([self.index[a] for a in ACTIONS], dtype=np.int16)

    @cached_property
    def _cell_lut(self) -> np.ndarray:
        """(6, 16) id of a cell: row 0 no robot, rows 1-4 robot by direction, row 5 wall."""
        lut = np.zeros((6, MAX_MARKERS + 1), dtype=np.int16)
        lut[0] = [self.index[EMPTY]] + [self.index[str(k)] for k in range(1, MAX_MARKERS + 1)]
        for d, g in enumerate(ROBOT_GLYPHS):
            show = self.robot_markers == "show"
            lut[1 + d] = [self.index[g]] + [
                self.index[g + str(k)] if show else self.index[g] for k in range(1, MAX_MARKERS + 1)
            ]
        lut[5] = self.index[WALL]
        return lut


def prompt_length(n_spec: int = N_SPEC) -> int:
    """Tokens before the first action: 2 headers + 36 cells per pair, then ``Code: def run() {``."""
    return n_spec * PAIR_TOKENS + len(PROGRAM_OPEN)


def input_cell_mask(n_spec: int = N_SPEC) -> np.ndarray:
    """(prompt_length,) bool: True at the offsets of the input grids' cells.

    Input worlds are random draws, so beyond their cell frequencies no model can predict these
    tokens; the output grids (and the program) are what depends on the hidden program.
    """
    mask = np.zeros(prompt_length(n_spec), dtype=bool)
    for k in range(n_spec):
        start = k * PAIR_TOKENS + 1  # after the Input{k} header
        mask[start : start + GRID_CELLS] = True
    return mask


def grid_ids(worlds: WorldBatch, vocab: Vocab) -> np.ndarray:
    """(n, GRID_CELLS) token ids of the interior cells of each world, row-major."""
    n = len(worlds)
    markers = worlds.markers.astype(np.intp)
    if markers.max(initial=0) > MAX_MARKERS:
        raise ValueError(f"markers: a count above {MAX_MARKERS} has no token")
    kind = np.zeros((n, SIZE, SIZE), dtype=np.intp)
    kind[np.arange(n), worlds.row, worlds.col] = 1 + worlds.dir.astype(np.intp)
    kind[worlds.walls] = 5
    return vocab._cell_lut[kind, markers][:, 1:-1, 1:-1].reshape(n, GRID_CELLS)


def encode_samples(
    inputs: WorldBatch, outputs: WorldBatch, programs: np.ndarray, vocab: Vocab, n_spec: int = N_SPEC
) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of P samples: ``(ids (P, T) int16 padded with <pad>, lengths (P,))``.

    ``inputs``/``outputs`` hold ``W >= n_spec`` worlds per program (program-major); only the
    first ``n_spec`` pairs are shown. ``programs`` is (P, L) action ids padded with -1.
    """
    programs = np.asarray(programs)
    n_prog, width = programs.shape
    n_worlds = len(inputs) // n_prog
    if n_worlds < n_spec:
        raise ValueError(f"n_spec: {n_spec} pairs asked for but only {n_worlds} worlds per program")
    gi = grid_ids(inputs, vocab).reshape(n_prog, n_worlds, GRID_CELLS)[:, :n_spec]
    go = grid_ids(outputs, vocab).reshape(n_prog, n_worlds, GRID_CELLS)[:, :n_spec]
    heads_in = np.array([vocab.id(f"Input{i}") for i in range(n_spec)], np.int16)
    heads_out = np.array([vocab.id(f"Output{i}") for i in range(n_spec)], np.int16)
    spec = np.concatenate(
        [
            np.broadcast_to(heads_in[None, :, None], (n_prog, n_spec, 1)),
            gi,
            np.broadcast_to(heads_out[None, :, None], (n_prog, n_spec, 1)),
            go,
        ],
        axis=2,
    ).reshape(n_prog, -1)
    opening = np.broadcast_to(vocab.encode(PROGRAM_OPEN), (n_prog, len(PROGRAM_OPEN)))
    lengths = (programs >= 0).sum(axis=1)
    body = np.full((n_prog, width + 2), vocab.id(PAD_TOKEN), dtype=np.int16)
    body[:, :width] = np.where(programs >= 0, vocab.action_ids[np.maximum(programs, 0)], body[:, :width])
    rows = np.arange(n_prog)
    body[rows, lengths] = vocab.id(PROGRAM_CLOSE)
    body[rows, lengths + 1] = vocab.id(EOS_TOKEN)
    ids = np.concatenate([spec, opening, body], axis=1).astype(np.int16)
    return ids, spec.shape[1] + len(PROGRAM_OPEN) + lengths + 2


def program_actions(sample_lengths, n_spec: int = N_SPEC) -> np.ndarray:
    """Actions in each program, from the token lengths ``encode_samples`` returns (its inverse:
    the prompt, the actions, ``}`` and ``<eos>``)."""
    return np.asarray(sample_lengths) - prompt_length(n_spec) - 2


# ---- readable text, one sample at a time ------------------------------------------------


def format_grid(world: World, vocab: Vocab | None = None) -> str:
    ids = grid_ids(WorldBatch.from_worlds([world]), vocab or Vocab())[0]
    toks = (vocab or Vocab()).decode(ids)
    return "\n".join(" ".join(toks[r * 6 : r * 6 + 6]) for r in range(6))


def format_sample(inputs, outputs, program, vocab: Vocab | None = None) -> str:
    """The text of one sample from its spec worlds (lists of World) and its program."""
    vocab = vocab or Vocab()
    if len(inputs) != len(outputs):
        raise ValueError(f"inputs/outputs: {len(inputs)} inputs but {len(outputs)} outputs")
    lines = []
    for i, (wi, wo) in enumerate(zip(inputs, outputs)):
        lines += [f"Input{i}", format_grid(wi, vocab), f"Output{i}", format_grid(wo, vocab)]
    lines += ["Code:", "def run() {", *(ACTIONS[a] for a in parse_program(program)), "}"]
    return "\n".join(lines)


def tokens_to_text(tokens) -> str:
    """Lay a token sequence out as sample text (6 cells a line, one action a line)."""
    lines, row = [], []
    for tok in tokens:
        if tok in (PAD_TOKEN, EOS_TOKEN):
            continue
        if tok.startswith(("Input", "Output")) or tok in (*ACTIONS, "Code:", PROGRAM_CLOSE):
            lines.append(tok)
        elif tok == "def":
            lines.append(tok)
        elif tok in ("run()", "{"):
            lines[-1] += " " + tok
        else:
            row.append(tok)
            if len(row) == 6:
                lines.append(" ".join(row))
                row = []
    return "\n".join(lines)


def parse_grid(lines: list[str], first_line: int, vocab: Vocab) -> World:
    """A World from 6 lines of 6 cell tokens; ``first_line`` (1-based) is used in errors."""
    walls = np.ones((SIZE, SIZE), bool)
    markers = np.zeros((SIZE, SIZE), np.int64)
    robot = []
    if len(lines) != 6:
        raise ValueError(f"line {first_line}: a grid needs 6 lines, found {len(lines)}")
    for r, line in enumerate(lines):
        cells = line.split()
        if len(cells) != 6:
            raise ValueError(f"line {first_line + r}: a grid line needs 6 cells, found {len(cells)}: {line!r}")
        for c, tok in enumerate(cells):
            rr, cc = r + 1, c + 1
            walls[rr, cc] = tok == WALL
            if tok in (WALL, EMPTY):
                continue
            if tok[0] in ROBOT_GLYPHS and (tok in ROBOT_GLYPHS or tok in vocab.index):
                robot.append((rr, cc, DIRECTIONS[ROBOT_GLYPHS.index(tok[0])]))
                tok = tok[1:] or "0"
            if not tok.isdigit() or not 0 <= int(tok) <= MAX_MARKERS:
                raise ValueError(f"line {first_line + r}: bad cell token {cells[c]!r} in {line!r}")
            markers[rr, cc] = int(tok)
    if len(robot) != 1:
        raise ValueError(f"line {first_line}: a grid needs exactly one robot, found {len(robot)}")
    return World(walls, markers, *robot[0])


def parse_sample(text: str, vocab: Vocab | None = None):
    """(inputs, outputs, program tokens) from sample text; errors name the line."""
    vocab = vocab or Vocab()
    lines = [(n + 1, ln.strip()) for n, ln in enumerate(text.splitlines()) if ln.strip()]
    inputs, outputs, i = [], [], 0
    while i < len(lines) and lines[i][1] != "Code:":
        num, head = lines[i]
        k = len(inputs)
        want = f"Input{k}" if len(inputs) == len(outputs) else f"Output{k - 1}"
        if head != want:
            raise ValueError(f"line {num}: expected {want!r}, found {head!r}")
        grid = parse_grid([ln for _, ln in lines[i + 1 : i + 7]], num + 1, vocab)
        (inputs if want.startswith("Input") else outputs).append(grid)
        i += 7
    if len(inputs) != len(outputs) or not inputs:
        raise ValueError("spec: expected Input/Output pairs before 'Code:'")
    body = lines[i:]
    if len(body) < 3 or body[0][1] != "Code:" or body[1][1] != "def run() {" or body[-1][1] != "}":
        where = body[0][0] if body else (lines[-1][0] if lines else 1)
        raise ValueError(f"line {where}: expected 'Code:', 'def run() {{', actions, '}}'")
    program = []
    for num, tok in body[2:-1]:
        if tok not in ACTIONS:
            raise ValueError(f"line {num}: unknown action token {tok!r}")
        program.append(tok)
    return inputs, outputs, program
