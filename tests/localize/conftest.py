"""Fixtures shared by the localization tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from medssl.localize import structures as structures_module
from medssl.localize.structures import SentenceEncoder


@pytest.fixture(scope="module")
def encoder() -> Iterator[SentenceEncoder]:
    """One real sentence encoder for the whole module (every StructuresLocalizer gets it)."""
    shared = SentenceEncoder()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(structures_module, "SentenceEncoder", lambda *a, **k: shared)
        yield shared
