"""Hugging Face `datasets` input: a dataset plus a column mapping becomes a list of Examples."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from probe.data.example import Example

FIELDS = ("id", "image", "prompt", "answer", "lang", "condition", "question_type", "image_dependent")


def examples_from_hf(
    dataset: Any,
    columns: Mapping[str, str] | None = None,
    *,
    label_columns: tuple[str, ...] = (),
    image_root: str | Path | None = None,
) -> list[Example]:
    """Turn a `datasets.Dataset` into Examples.

    columns: Example field -> dataset column (e.g. {"prompt": "question", "image": "img"});
    unmapped fields use a column of the same name when it exists. `label_columns` become labels.
    Image columns may hold PIL images (the `Image` feature) or paths (relative to `image_root`).
    """
    columns = dict(columns or {})
    names = set(dataset.column_names)
    unknown = set(columns) - set(FIELDS)
    if unknown:
        raise ValueError(f"column mapping has unknown Example fields {sorted(unknown)}; known: {FIELDS}")
    for field in FIELDS:
        columns.setdefault(field, field)
    missing = [c for f, c in columns.items() if f in ("prompt",) and c not in names]
    missing += [c for c in label_columns if c not in names]
    if missing:
        raise ValueError(f"dataset has no column(s) {missing}; it has {sorted(names)}")
    root = Path(image_root) if image_root is not None else None
    out: list[Example] = []
    for i, row in enumerate(dataset):
        def get(field: str, default: Any = None) -> Any:
            col = columns[field]
            return row[col] if col in names and row[col] is not None else default

        image = get("image")
        if isinstance(image, str) and root is not None and not Path(image).is_absolute():
            image = root / image
        dep = get("image_dependent")
        if dep is not None and not isinstance(dep, bool):  # bool("false") is True: refuse, as manifests do
            raise ValueError(f"dataset row {i}: column {columns['image_dependent']!r} must hold booleans, got {dep!r}")
        out.append(
            Example(
                id=str(get("id", i)),
                image=image,
                prompt=str(get("prompt")),
                answer=get("answer"),
                lang=str(get("lang", "en")),
                condition=str(get("condition", "real")),
                question_type=str(get("question_type", "unknown")),
                image_dependent=None if dep is None else bool(dep),
                labels={c: row[c] for c in label_columns},
            )
        )
    return out
