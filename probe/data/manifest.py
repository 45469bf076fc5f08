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
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    examples: list[Example] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(raw, dict):
                raise ManifestError(f"{where}: expected a JSON object")
            examples.append(_example_from_record(raw, where, path.parent, len(examples)))
            if examples[-1].id in seen:
                raise ManifestError(f"{where}: duplicate example id {examples[-1].id!r}")
            seen.add(examples[-1].id)
    return examples


def _example_from_record(raw: dict, where: str, root: Path, index: int) -> Example:
    if not isinstance(raw.get("prompt"), str):
        raise ManifestError(f"{where}: missing string field 'prompt'")
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
