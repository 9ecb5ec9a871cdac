"""state_mismatches: every way a state dict can fail to load strictly, named."""

from __future__ import annotations

import torch

from medssl.models.state_check import state_mismatches


def test_fitting_state_has_no_mismatch_and_optional_prefix_may_be_absent() -> None:
    expected = {"conv.weight": torch.zeros(4, 1, 3, 3), "fc.weight": torch.zeros(2, 4)}
    assert state_mismatches(expected, {"conv.weight": torch.ones(4, 1, 3, 3)}, optional_prefix="fc.") == []
    assert state_mismatches(expected, {"conv.weight": torch.ones(4, 1, 3, 3)}) == ["1 missing key(s) (fc.weight)"]


def test_missing_unexpected_and_shape_mismatches_are_listed_in_order() -> None:
    expected = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1, 2)}
    given = {"b": torch.zeros(4), "c": torch.zeros(1, 2), "z": torch.zeros(1)}
    assert state_mismatches(expected, given) == [
        "1 missing key(s) (a)", "1 unexpected key(s) (z)", "1 shape mismatch(es) (b (4,) vs (3,))"]
