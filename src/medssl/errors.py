"""User-facing errors.

Anything a user can cause (a corrupt file, a shape mismatch, a bad config value, missing weights)
raises :class:`MedsslInputError`. The command line prints its message as one line and exits with
code 2; internal bugs raise ordinary exceptions.
"""

from __future__ import annotations

from pathlib import Path

EXIT_USER_ERROR = 2


class MedsslInputError(Exception):
    """A problem with the user's input, reported as ``"<source>: <problem>"``.

    Args:
        source: the file, folder, config key or model id the problem is about.
        problem: what is wrong, in a few words, ideally with what was expected.
    """

    def __init__(self, source: str | Path | None, problem: str) -> None:
        self.source = None if source is None else str(source)
        self.problem = problem
        super().__init__(problem if source is None else f"{source}: {problem}")


class MissingWeightsError(MedsslInputError):
    """Model weights are neither in a local directory nor reachable on a hub."""
