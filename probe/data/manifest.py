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


def read_manifest(path: str | Path) -> list[Example]:
    """Read a JSONL manifest; image paths are resolved relative to the manifest's folder.

    Unknown top-level fields are kept as labels, so a user's extra columns become probe targets.
    The first bad line raises ManifestError naming file:line.
    """
    examples, bad = _read(Path(path), stop_at_bad=True)
    return examples


def read_manifest_skipping(path: str | Path) -> tuple[list[Example], list[tuple[str, str]]]:
    """Read a manifest leaving out bad lines: (examples, [("file:line", reason), ...])."""
    return _read(Path(path), stop_at_bad=False)


def _read(path: Path, *, stop_at_bad: bool) -> tuple[list[Example], list[tuple[str, str]]]:
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    examples: list[Example] = []
    bad: list[tuple[str, str]] = []
    seen: set[str] = set()
    for lineno, raw_line in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path}:{lineno}"
        try:
            example = _parse_line(raw_line, where, path.parent, len(examples))
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


def _parse_line(raw_line: bytes, where: str, root: Path, index: int) -> Example | None:
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
    return _example_from_record(raw, where, root, index)


def _example_from_record(raw: dict, where: str, root: Path, index: int) -> Example:
    if not isinstance(raw.get("prompt"), str):
        raise ManifestError(f"{where}: missing string field 'prompt'")
    for name in ("image", "answer"):
        if raw.get(name) is not None and not isinstance(raw[name], str):
            raise ManifestError(f"{where}: {name!r} must be a string or null, got {type(raw[name]).__name__}")
    if raw.get("labels") is not None and not isinstance(raw["labels"], dict):
        raise ManifestError(f"{where}: 'labels' must be a JSON object (name: value), got {type(raw['labels']).__name__}")
    image = raw.get("image")
    if image is not None:
        image_path = Path(image)
        image = image_path if image_path.is_absolute() else root / image_path
    labels = dict(raw.get("labels") or {})
    labels.update({k: v for k, v in raw.items() if k not in _KNOWN})
    dep = raw.get("image_dependent")
    return Example(
        id=str(raw.get("id", index)),
        image=image,
        prompt=raw["prompt"],
        answer=raw.get("answer"),
        lang=str(raw.get("lang", "en")),
        condition=str(raw.get("condition", "real")),
        question_type=str(raw.get("question_type", "unknown")),
        image_dependent=None if dep is None else bool(dep),
        labels=labels,
        group=None if raw.get("group") is None else str(raw["group"]),
    )


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
