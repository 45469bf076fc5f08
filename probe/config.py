"""One loader for every configuration file (capture spec, intervention grid, mitigation recipe, SFT config).

A file is YAML or JSON (by suffix: `.json` is JSON, anything else YAML). YAML is read with the safe loader, so a
tag (`!!python/...`) is refused, never executed. The top level is a mapping of a frozen dataclass's fields:
an unknown key, a value of the wrong type, a syntax error or an empty file is one `ConfigError` line naming
the file and the line (or the key). Fields named as paths are taken relative to the file's folder.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the file and line or key."""


@dataclasses.dataclass
class ConfigFile:
    """A parsed configuration file: its data and where each key sits."""

    path: Path
    data: Any
    _node: Any = None

    def where(self, *keys: str | int) -> str:
        """`file:line` of the value at `keys` (nested mapping keys / list indices); `file` when unknown."""
        node = self._node
        line = None
        for key in keys:
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == str(key)), None)
                if match is None:
                    break
                line = match[0].start_mark.line + 1
                node = match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
                line = node.start_mark.line + 1
            else:
                break
        return f"{self.path}:{line}" if line is not None else str(self.path)


def read_config(path: str | Path, *, what: str = "config") -> ConfigFile:
    """Parse a YAML/JSON file into data; one-line ConfigError for an unreadable, malformed, tagged or empty file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read {what} ({err.strerror or err})" if isinstance(err, OSError)
                          else f"{path}: cannot read {what} (not UTF-8 text)") from None
    if not text.strip():
        raise ConfigError(f"{path}: empty {what} file; expected a mapping of fields")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{err.lineno}: invalid JSON in {what} ({err.msg}, column {err.colno})") from None
        node = _compose(text)
    else:
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
        except yaml.constructor.ConstructorError as err:
            line = err.problem_mark.line + 1 if err.problem_mark else "?"
            tag = (err.problem or "").rpartition("tag ")[2] or "a tag"
            raise ConfigError(f"{path}:{line}: YAML tag {tag} is not allowed in a {what} (tags are never executed)") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            context, cmark = getattr(err, "context", None), getattr(err, "context_mark", None)
            if context and cmark is not None and mark is not None and cmark.line != mark.line:
                problem += f"; {context} at line {cmark.line + 1}"
            raise ConfigError(f"{path}{line}: YAML syntax error in {what} ({problem})") from None
    if data is None:
        raise ConfigError(f"{path}: empty {what} file; expected a mapping of fields")
    if not isinstance(data, dict):
        kind = "JSON object" if path.suffix.lower() == ".json" else "YAML mapping"
        raise ConfigError(f"{path}: a {what} is a {kind} of fields, got a {type(data).__name__}")
    return ConfigFile(path, data, node)


def _compose(text: str) -> Any:
    try:  # JSON is YAML: the composed node gives key lines
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None


def build(cls: type[T], data: Mapping[str, Any], *, where: Callable[..., str] | str = "<config>", what: str | None = None,
          paths: Iterable[str] = (), root: Path | None = None, absolute: bool = False,
          check: Callable[[dict[str, Any]], None] | None = None) -> T:
    """The dataclass `cls` from a mapping: unknown keys and wrong types refused in one line, lists made tuples.

    `paths` name the fields (dotted for a nested mapping: "pre.manifest") holding file paths, taken relative
    to `root` when that local path exists (a hub id stays as written; `absolute` resolves the joined path).
    `check(data)` may refuse more before anything else (raw data; a plain ValueError gets the file prefixed). `where(*keys)` names a key's location (a ConfigFile's).
    """
    locate = where if callable(where) else (lambda *keys, _w=where: _w)
    what = what or cls.__name__
    data = dict(data)
    if check is not None:
        try:
            check(data)
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(f"{locate()}: {err}") from None
    fixed = _convert(cls, data, locate, (), what)
    if root is not None:
        for dotted in paths:
            _resolve_path(fixed, dotted.split("."), root, absolute)
    try:
        return cls(**fixed)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{locate()}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def load(cls: type[T], path: str | Path, *, what: str | None = None, paths: Iterable[str] = (), absolute: bool = False,
         resolve_paths: bool = True, check: Callable[[dict[str, Any]], None] | None = None) -> T:
    """Read `path` (YAML/JSON) into the dataclass `cls` (see `build`); paths relative to the file's folder."""
    what = what or cls.__name__
    cfg = read_config(path, what=what)
    return build(cls, cfg.data, where=cfg.where, what=what, paths=paths,
                 root=cfg.path.parent if resolve_paths else None, absolute=absolute, check=check)


def _resolve_path(data: dict[str, Any], keys: list[str], root: Path, absolute: bool) -> None:
    head, rest = keys[0], keys[1:]
    value = data.get(head)
    if rest:
        if isinstance(value, dict):
            data[head] = dict(value)
            _resolve_path(data[head], rest, root, absolute)
        return
    if not isinstance(value, str) or not value or Path(value).is_absolute():
        return
    cand = root / value
    if cand.exists():
        data[head] = str(cand.resolve() if absolute else cand)


def _convert(cls: type, data: dict[str, Any], locate: Callable[..., str], prefix: tuple, what: str) -> dict[str, Any]:
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in known]
    if unknown:
        key = unknown[0]
        raise ConfigError(f"{locate(*prefix, key)}: unknown {what} field {key!r} (known: {', '.join(known)})")
    hints = typing.get_type_hints(cls)
    return {k: _coerce(v, hints[k], locate, (*prefix, k), what) for k, v in data.items()}


def _coerce(value: Any, hint: Any, locate: Callable[..., str], keys: tuple, what: str) -> Any:
    """`value` checked against the annotation `hint`; lists become tuples where a tuple is declared."""
    ok, out = _match(value, hint, locate, keys, what)
    if not ok:
        name = ".".join(str(k) for k in keys)
        raise ConfigError(f"{locate(*keys)}: {what} field {name!r} must be {_describe(hint)}, got {value!r}")
    return out


def _match(value: Any, hint: Any, locate: Callable[..., str], keys: tuple, what: str) -> tuple[bool, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True, value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, out = _match(value, arg, locate, keys, what)
            if ok:
                return True, out
        return False, value
    if hint is type(None):
        return value is None, value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return True, value
        if not isinstance(value, dict):
            return False, value
        return True, _convert(hint, value, locate, keys, what)
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        if len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], locate, (*keys, i), what) for i, v in enumerate(value)]
        elif args:
            if len(value) != len(args):
                return False, value
            items = [_coerce(v, a, locate, (*keys, i), what) for i, (v, a) in enumerate(zip(value, args))]
        else:
            items = list(value)
        return True, tuple(items)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return False, value
        return True, [_coerce(v, args[0], locate, (*keys, i), what) if args else v for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    return True, value  # an annotation this checker does not know: the dataclass validates it


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is tuple:
        return f"a list of {_describe(args[0])}" if len(args) == 2 and args[1] is Ellipsis else f"a list of {len(args)} values"
    if origin in (list,):
        return "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} fields"
    return getattr(hint, "__name__", str(hint))


__all__ = ["ConfigError", "ConfigFile", "build", "load", "read_config"]
