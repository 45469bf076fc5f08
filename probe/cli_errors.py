"""One error layer for every command of the CLIs: a user's mistake or a fault prints one line, not a traceback.

`--debug` on the root command (or VISBLIND_DEBUG=1 in the environment) shows the traceback instead.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from typing import Any

import click
import typer

DEBUG_ENV = "VISBLIND_DEBUG"
# Errors that carry a user-facing one-line message; anything else is reported with its type (a bug).
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, KeyError, ImportError)
_state = {"debug": False}
try:
    from PIL.Image import DecompressionBombError as _PIL_BOMB
except ImportError:  # pragma: no cover - PIL is a dependency
    _PIL_BOMB = None


class App(typer.Typer):
    """typer.Typer whose commands all go through `one_line_errors`; the root one takes `--debug`."""

    def __init__(self, *, root: bool = False, **kwargs: Any) -> None:
        super().__init__(add_completion=False, pretty_exceptions_show_locals=False, **kwargs)
        if root:
            self.callback()(_root_options)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable], Callable]:
        register = super().command(*args, **kwargs)
        return lambda fn: register(one_line_errors(fn))


def _root_options(
    debug: bool = typer.Option(False, "--debug", help=f"show the full traceback on errors (or set {DEBUG_ENV}=1)"),
) -> None:
    _state["debug"] = debug


def debug_enabled() -> bool:
    """Whether tracebacks are wanted (`--debug` or VISBLIND_DEBUG=1)."""
    return _state["debug"] or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


def one_line_errors(fn: Callable) -> Callable:
    """Run a command; on an exception print `error: <one line>` and exit 2 (re-raise when debugging)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, typer.Exit, click.exceptions.Abort, click.ClickException, KeyboardInterrupt):
            raise  # typer.Exit is not click's Exit in typer >= 0.16: a command's own exit code is not an error
        except Exception as err:
            if debug_enabled():
                raise
            typer.secho(f"error: {describe(err, kwargs)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=2) from None

    return wrapper


def describe(err: BaseException, params: dict[str, Any]) -> str:
    """The one line shown for `err` raised by a command called with `params`."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        target = params.get("out") or params.get("store") or "the output"
        return (f"no space left on the device while writing {target}: everything committed before stays valid; "
                "free space and rerun the same command to resume")
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else type(err).__name__
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
        if not _is_sentence(err.args[0]):  # a bare key (`error: 99999`) says neither what nor where: a bug
            return f"KeyError: {err.args[0]!r} (an unexpected error: rerun with --debug for the traceback)"
    if len(lines) > 1:
        text += f" (+{len(lines) - 1} more lines: --debug)"
    if _PIL_BOMB is not None and isinstance(err, _PIL_BOMB):  # raised outside an example's image loading
        return f"{text} (PIL's decompression-bomb guard, Image.MAX_IMAGE_PIXELS)"
    if not isinstance(err, _USER_ERRORS):
        return f"{type(err).__name__}: {text} (an unexpected error: rerun with --debug for the traceback)"
    return text


def _is_sentence(value: object) -> bool:
    """Whether a KeyError's argument is a message (words) rather than the bare key that was looked up."""
    return isinstance(value, str) and " " in value.strip()
