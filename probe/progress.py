"""The one way to make a progress bar: live on a terminal, one line per `NON_TTY_INTERVAL` s in logs."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

NON_TTY_INTERVAL = 30.0  # seconds between updates when stderr is a file or a pipe (CI logs, nohup)


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)`, updating at most every NON_TTY_INTERVAL s unless stderr is a terminal."""
    stream = kwargs.get("file") or sys.stderr
    isatty = getattr(stream, "isatty", None)
    live = (callable(isatty) and isatty()) or "ipykernel" in sys.modules  # a notebook's widget bar is live too
    if not live:
        kwargs.setdefault("mininterval", NON_TTY_INTERVAL)
        kwargs.setdefault("maxinterval", max(NON_TTY_INTERVAL, kwargs["mininterval"]))
    return tqdm(iterable, **kwargs)
