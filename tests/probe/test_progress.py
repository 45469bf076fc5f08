"""Progress bars: live on a terminal, at most one update per NON_TTY_INTERVAL s when written to a log."""

from __future__ import annotations

import io

import pytest

from probe.progress import NON_TTY_INTERVAL, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture()
def clock(monkeypatch):
    """tqdm's clock advanced by 1 s per reading: 200 steps take about 200 s of fake time."""
    import tqdm.std

    now = [0.0]

    def tick() -> float:
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(tqdm.std, "time", tick)
    return now


def _updates(stream: io.StringIO, steps: int = 200) -> int:
    for _ in progress_bar(range(steps), file=stream, desc="work"):
        pass
    return len([s for s in stream.getvalue().replace("\n", "\r").split("\r") if "work" in s])


def test_log_file_gets_an_update_per_interval(clock):
    elapsed_bound = 3 * 200  # the fake clock is read at most a few times per step
    assert 2 <= _updates(io.StringIO()) <= elapsed_bound / NON_TTY_INTERVAL + 2


def test_terminal_updates_live(clock):
    assert _updates(_Terminal()) >= 50


def test_caller_settings_win():
    bar = progress_bar(range(3), file=io.StringIO(), mininterval=60.0)
    assert bar.mininterval == 60.0 and bar.maxinterval >= 60.0
    bar.close()


def test_every_bar_goes_through_the_helper():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    direct = [str(p.relative_to(root)) for pkg in ("probe", "train", "interventions", "apps")
              for p in (root / pkg).rglob("*.py")
              if p.name != "progress.py" and ("from tqdm" in p.read_text() or "import tqdm" in p.read_text())]
    assert direct == [], f"create bars with probe.progress.progress_bar: {direct}"
