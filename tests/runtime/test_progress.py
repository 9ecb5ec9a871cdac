"""medssl.runtime.progress: plain lines in quiet / non-terminal mode, rich bar on a terminal."""

from __future__ import annotations

import io
import re

from medssl.runtime.progress import format_duration, progress_bar


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


LINE = re.compile(r"^train: (\d+)/10 \((\d+)%\)( loss [0-9.]+)? \| elapsed \d+:\d\d:\d\d \| eta (\d+:\d\d:\d\d|\?)$")


def test_quiet_prints_plain_lines_every_n() -> None:
    out = FakeTerminal()  # quiet wins even on a terminal
    with progress_bar(10, "train", quiet=True, every=4, stream=out, rank=0) as bar:
        for i in range(10):
            bar.update(i + 1, loss=1.0 / (i + 1))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # at 4, 8 and the end
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches] == [4, 8, 10]
    assert [int(m.group(2)) for m in matches] == [40, 80, 100]
    assert lines[0].startswith("train: 4/10 (40%) loss 0.25 |")


def test_non_terminal_is_plain_and_resume_start_counts() -> None:
    out = io.StringIO()
    with progress_bar(10, "train", quiet=False, start=6, every=2, stream=out, rank=0) as bar:
        for _ in range(4):
            bar.advance()
    lines = out.getvalue().splitlines()
    assert [int(LINE.match(line).group(1)) for line in lines] == [8, 10]


def test_other_ranks_are_silent() -> None:
    out = io.StringIO()
    with progress_bar(10, "train", quiet=True, every=1, stream=out, rank=1) as bar:
        for i in range(10):
            bar.update(i + 1, loss=0.1)
    assert out.getvalue() == ""


def test_rich_bar_on_terminal() -> None:
    out = FakeTerminal()
    with progress_bar(10, "train", quiet=False, stream=out, rank=0) as bar:
        for i in range(10):
            bar.update(i + 1, loss=0.5)
    text = out.getvalue()
    assert "10/10" in text and "loss 0.5" in text and "train" in text
    assert "\x1b[" in text  # a live, styled terminal bar rather than plain lines


def test_format_duration() -> None:
    assert format_duration(3725) == "1:02:05"
    assert format_duration(float("nan")) == "?"
