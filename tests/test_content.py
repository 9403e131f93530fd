"""Semantic content per checkpoint (tasks.phases): raw, and beyond the random-init model."""

import pandas as pd
import pytest

from tasks.phases import CONTENT_PROBE, init_content


def _rows(step, semantics, values, probe=CONTENT_PROBE, kind="random_init", offset=0):
    return [dict(checkpoint_key=f"ck{step}", step=step, feature=f, offset=offset, kind=kind, probe=probe,
                 value=v, semantics=semantics) for f, v in values.items()]


def test_init_content_is_original_minus_each_alternative_averaged():
    c = pd.DataFrame(
        _rows(6, "original", {"direction": 0.5, "facing_wall": 0.7})
        + _rows(6, "flip", {"direction": 0.3, "facing_wall": 0.7})
        + _rows(6, "adversarial", {"direction": 0.4, "facing_wall": 0.9})
        # none of these count: another kind, probe, offset, feature
        + _rows(6, "flip", {"direction": 0.0}, kind="majority")
        + _rows(6, "flip", {"direction": 0.0}, probe="linear")
        + _rows(6, "flip", {"direction": 0.0}, offset=1)
        + _rows(6, "flip", {"rel_end": 0.0})
        + _rows(12, "original", {"direction": 0.6}) + _rows(12, "flip", {"direction": 0.6}))
    out = init_content(c, ("direction", "facing_wall")).set_index("step")["init_content"]
    # step 6: direction (0.2 + 0.1) / 2, facing_wall (0.0 - 0.2) / 2 -> mean 0.025
    assert out[6] == pytest.approx(((0.5 - 0.3) + (0.5 - 0.4) + (0.7 - 0.7) + (0.7 - 0.9)) / 4)
    assert out[12] == pytest.approx(0.0)


def test_init_content_needs_the_original_semantics():
    c = pd.DataFrame(_rows(6, "flip", {"direction": 0.3}))
    assert init_content(c, ("direction",)).empty
    assert init_content(pd.DataFrame(), ("direction",)).empty
