"""``medssl report``: placeholder until run reports land (prints "not available yet", exit 1)."""

from __future__ import annotations

from medssl.cli.planned import not_yet


def report() -> None:
    """[planned] One-page HTML / markdown report over run directories."""
    not_yet("report")
