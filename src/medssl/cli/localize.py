"""``medssl localize``: placeholder until the localize commands land (prints "not available yet", exit 1)."""

from __future__ import annotations

from medssl.cli.planned import planned_group

app = planned_group("localize")
