"""Reading a grid file through probe's config loader, with each intervention's parameters checked by name and type."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, TypeVar

from interventions.base import intervention_class
from probe.config import ConfigError, build, read_config

G = TypeVar("G")
IMAGE = "image"  # the runner's input-side ablation entry (interventions.runner.IMAGE)
_INJECTED = {"self", "adapter", "recipient", "donor"}  # given by the runner, not by the grid


def accepted_parameters(name: str) -> dict[str, inspect.Parameter]:
    """The keyword parameters intervention `name` takes, following `**kw` up to the base classes' __init__."""
    out: dict[str, inspect.Parameter] = {}
    for klass in intervention_class(name).__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        out.update({k: p for k, p in params.items() if k not in _INJECTED and k not in out
                    and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)})
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return out


def _type_ok(value: Any, default: Any) -> bool:
    """Whether a grid value suits a parameter whose default is `default` (no default or None: not checked)."""
    if default is inspect.Parameter.empty or default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (isinstance(default, float) or isinstance(value, int))
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, (tuple, list)):
        return isinstance(value, (tuple, list, str))
    return True


def load_grid(cls: type[G], path: str | Path) -> G:
    """A GridConfig (`cls`) from a YAML/JSON file: one line naming file:line for any bad key, value or parameter."""
    cfg = read_config(path, what="grid")

    def check(data: dict[str, Any]) -> None:
        entries = data.get("interventions") or ()
        for i, entry in enumerate(entries if isinstance(entries, (list, tuple)) else ()):
            name = entry.get("name") if isinstance(entry, dict) else None
            if name == IMAGE or not isinstance(name, str):
                continue
            try:
                accepted = accepted_parameters(name)
            except KeyError as err:
                raise ConfigError(f"{cfg.where('interventions', i, 'name')}: {err.args[0]}") from None
            params = entry.get("params") or {}
            for key, values in (params.items() if isinstance(params, dict) else ()):
                where = cfg.where("interventions", i, "params", key)
                if key not in accepted:
                    raise ConfigError(f"{where}: intervention {name!r} has no parameter {key!r} "
                                      f"(known: {', '.join(accepted) or 'none'})")
                if not isinstance(values, (list, tuple)) or not values:
                    raise ConfigError(f"{where}: intervention {name!r}: parameter {key!r} must list its values, got {values!r}")
                default = accepted[key].default
                bad = next((v for v in values if not _type_ok(v, default)), None)
                if bad is not None:
                    raise ConfigError(f"{where}: intervention {name!r}: parameter {key!r} must be "
                                      f"{type(default).__name__} values, got {bad!r}")

    return build(cls, cfg.data, where=cfg.where, what="grid", paths=("model", "manifest", "donor"),
                 root=cfg.path.parent, absolute=True, check=check)
