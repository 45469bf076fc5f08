"""JSONL manifests: one example per line (image path, prompt, optional answer, lang, labels)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from probe.data.example import Example

_KNOWN = {"id", "image", "prompt", "answer", "lang", "condition", "question_type", "image_dependent", "labels", "group"}


class ManifestError(ValueError):
    """A manifest line cannot be read; the message names the file and line."""


def read_manifest(path: str | Path, *, allow_outside_paths: bool = True) -> list[Example]:
    """Read a JSONL manifest; image paths are resolved relative to the manifest's folder.

    Unknown top-level fields are kept as labels, so a user's extra columns become probe targets.
    The first bad line raises ManifestError naming file:line (field rules: docs/manifest.md).
    `allow_outside_paths=False` (the command line's default) refuses images outside the manifest's folder.
    """
    examples, bad = _read(Path(path), stop_at_bad=True, allow_outside_paths=allow_outside_paths)
    return examples


def read_manifest_skipping(path: str | Path, *, allow_outside_paths: bool = True
                           ) -> tuple[list[Example], list[tuple[str, str]]]:
    """Read a manifest leaving out bad lines: (examples, [("file:line", reason), ...])."""
    return _read(Path(path), stop_at_bad=False, allow_outside_paths=allow_outside_paths)


def _read(path: Path, *, stop_at_bad: bool, allow_outside_paths: bool) -> tuple[list[Example], list[tuple[str, str]]]:
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    examples: list[Example] = []
    bad: list[tuple[str, str]] = []
    seen: set[str] = set()
    for lineno, raw_line in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path}:{lineno}"
        try:
            example = _parse_line(raw_line, where, path.parent, len(examples), allow_outside_paths)
            if example is None:
                continue
            if example.id in seen:
                raise ManifestError(f"{where}: duplicate example id {example.id!r}")
        except ManifestError as err:
            if stop_at_bad:
                raise
            bad.append((where, str(err).removeprefix(f"{where}: ")))
            continue
        seen.add(example.id)
        examples.append(example)
    return examples, bad


def _parse_line(raw_line: bytes, where: str, root: Path, index: int, allow_outside_paths: bool) -> Example | None:
    try:
        line = raw_line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ManifestError(f"{where}: not UTF-8 (byte 0x{raw_line[err.start]:02x} at column {err.start + 1})") from None
    if not line.strip():
        return None
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    return _example_from_record(raw, where, root, index, allow_outside_paths)


def _example_from_record(raw: dict, where: str, root: Path, index: int, allow_outside_paths: bool = True) -> Example:
    if not isinstance(raw.get("prompt"), str):
        raise ManifestError(f"{where}: missing string field 'prompt'")
    for name in ("image", "answer"):
        if raw.get(name) is not None and not isinstance(raw[name], str):
            raise ManifestError(f"{where}: {name!r} must be a string or null, got {_kind(raw[name])}")
    if raw.get("answer") is not None and not raw["answer"].strip():
        raise ManifestError(f"{where}: 'answer' is empty; leave it out (or null) for an example without an answer")
    if raw.get("labels") is not None and not isinstance(raw["labels"], dict):
        raise ManifestError(f"{where}: 'labels' must be a JSON object (name: value), got {type(raw['labels']).__name__}")
    image = raw.get("image")
    if image is not None:
        image = image_path(image, root, where, allow_outside=allow_outside_paths)
    labels = dict(raw.get("labels") or {})
    labels.update({k: v for k, v in raw.items() if k not in _KNOWN})
    _check_choices(labels.get("choices"), where)
    return Example(
        id=_identifier(raw, "id", where, default=str(index)),
        image=image,
        prompt=raw["prompt"],
        answer=raw.get("answer"),
        lang=_text(raw, "lang", where, "en"),
        condition=_text(raw, "condition", where, "real"),
        question_type=_text(raw, "question_type", where, "unknown"),
        image_dependent=_flag(raw, "image_dependent", where),
        labels=labels,
        group=_identifier(raw, "group", where, default=None),
    )


def _kind(value: object) -> str:
    """How a JSON value is named in an error: its JSON type, and a short string's text."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 else "a string"
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _identifier(raw: dict, name: str, where: str, *, default: str | None) -> str | None:
    """An id or group: a non-empty string or an integer (kept as its digits); absent gives `default`, null is refused
    for `id` (it would become the text "None") and means "absent" for `group` (the documented default unit)."""
    if name not in raw or (raw[name] is None and name == "group"):
        return default
    value = raw[name]
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ManifestError(f"{where}: {name!r} must be a non-empty string or an integer, got {_kind(value)}")


def _text(raw: dict, name: str, where: str, default: str) -> str:
    """A label field (lang, condition, question_type): a non-empty string; absent gives `default`, null is refused."""
    if name not in raw:
        return default
    value = raw[name]
    if isinstance(value, str) and value.strip():
        return value
    raise ManifestError(f"{where}: {name!r} must be a non-empty string, got {_kind(value)} "
                        f"(leave the field out for the default {default!r})")


def _flag(raw: dict, name: str, where: str) -> bool | None:
    """A JSON boolean; absent or null is None (counted as image-dependent, docs/manifest.md); "false" is refused."""
    value = raw.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise ManifestError(f"{where}: {name!r} must be true, false or null, got {_kind(value)}")


def _check_choices(choices: object, where: str) -> None:
    """`labels.choices` (or a top-level `choices`): a list of non-empty strings (a string would be split into letters)."""
    if choices is None:
        return
    if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
        got = _kind(choices) if not isinstance(choices, list) else "a list with an empty or non-string item"
        raise ManifestError(f"{where}: 'choices' must be a list of non-empty strings, got {got}")


def image_path(image: str, root: Path, where: str, *, allow_outside: bool) -> Path:
    """An image path resolved against the manifest's folder `root`; outside it (absolute, `../`, a symlink leading out)
    only with `allow_outside` (`--allow-outside-paths`), so a manifest cannot make a command read any file."""
    given = Path(image)
    path = given if given.is_absolute() else root / given
    if not allow_outside:
        try:
            path.resolve().relative_to(root.resolve())
        except ValueError:
            raise ManifestError(f"{where}: image {image!r} lies outside the manifest's folder {root}; "
                                "pass --allow-outside-paths (allow_outside_paths=True) to read it") from None
    return path


def write_manifest(examples: Iterable[Example], path: str | Path) -> Path:
    """Write examples as JSONL; image paths are stored relative to the manifest's folder when possible."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            record = asdict(ex)
            if isinstance(ex.image, (str, Path)):
                image = Path(ex.image)
                try:
                    image = image.resolve().relative_to(path.parent.resolve())
                except ValueError:
                    pass
                record["image"] = image.as_posix()
            elif ex.image is not None:
                raise ManifestError(f"example {ex.id!r}: only image paths can be written to a manifest")
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
