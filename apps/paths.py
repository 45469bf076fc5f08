"""Which paths the dashboard may open: stores and result datasets under ROOT, never outside it."""

from __future__ import annotations

import json
import os
from pathlib import Path


class PathRefused(ValueError):
    """A requested path is not under the dashboard's ROOT (through `..`, an absolute path or a symlink)."""


def resolve_under_root(root: str | os.PathLike, rel: str | os.PathLike) -> Path:
    """The real path of ``rel`` (relative to ``root``); PathRefused (one line) if it leaves ``root``.

    ``..`` components are refused outright; symlinks are followed and the target must still lie under ROOT.
    """
    root_real = Path(root).resolve(strict=True)
    text = str(rel).strip()
    if not text:
        raise PathRefused("refused: empty path")
    bad = sorted({c for c in text if ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF or c == "\ufffd"})
    if bad:
        raise PathRefused(f"refused: {text!r} holds characters a path under ROOT may not have: {', '.join(map(repr, bad))}")
    parts = Path(text).parts
    if ".." in parts:
        raise PathRefused(f"refused: {text!r} contains '..'; give a path under ROOT {root_real}")
    candidate = Path(text) if Path(text).is_absolute() else root_real / text
    try:
        real = candidate.resolve(strict=False)
    except (OSError, RuntimeError) as err:  # a name too long, a symlink loop
        raise PathRefused(f"refused: {text!r} cannot be resolved ({err.strerror if isinstance(err, OSError) else err})") from None
    if not _under(real, root_real):
        raise PathRefused(f"refused: {text!r} resolves to {real}, outside ROOT {root_real}")
    return real


def _under(real: Path, root_real: Path) -> bool:
    return real == root_real or root_real in real.parents


def check_tree_under_root(root: str | os.PathLike, folder: Path) -> None:
    """PathRefused (one line) if any entry below ``folder`` (a store or result folder, already ROOT-checked) is a
    symlink that leads outside ROOT: every file the dashboard reads from it must resolve under ROOT.

    Symlinked folders that stay under ROOT are searched too (once each); reads only directory entries, no file."""
    root_real = Path(root).resolve(strict=True)
    seen: set[Path] = set()
    stack = [Path(folder).resolve()]
    while stack:
        here = stack.pop()
        if here in seen:
            continue
        seen.add(here)
        try:
            entries = list(os.scandir(here))
        except OSError as err:
            raise PathRefused(f"refused: {here} cannot be listed ({err.strerror})") from None
        for entry in entries:
            if entry.is_symlink():
                try:
                    real = Path(entry.path).resolve(strict=False)
                except (OSError, RuntimeError):
                    raise PathRefused(f"refused: {_shown(entry.path, root_real)} is a symlink that cannot be resolved") from None
                if not _under(real, root_real):
                    raise PathRefused(f"refused: {_shown(entry.path, root_real)} is a symlink to {real}, outside ROOT "
                                      f"{root_real}")
                if real.is_dir():
                    stack.append(real)
            elif entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))


def _shown(path: str, root_real: Path) -> str:
    try:
        return repr(str(Path(path).relative_to(root_real)))
    except ValueError:
        return repr(path)


def _zarr_meta(path: Path) -> dict | None:
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _is_store(meta: dict) -> bool:
    return meta.get("node_type") == "group" and "visblind_store" in (meta.get("attributes") or {})


def _is_results(path: Path, meta: dict) -> bool:
    """An experiment-runner results.zarr (probe.results: `visblind_result` = "run", or a run written before it)."""
    if meta.get("node_type") != "group":
        return False
    if (meta.get("attributes") or {}).get("visblind_result") == "run":
        return True
    var = _zarr_meta(path / "visually_dependent")
    return bool(var) and tuple(var.get("dimension_names") or ()) == ("condition", "example")


def discover(root: str | os.PathLike, max_depth: int = 4) -> dict[str, list[str]]:
    """Stores, intervention-result datasets and JSONL manifests under ``root`` as ROOT-relative paths.

    Returns {"stores": [...], "results": [...], "manifests": [...]}.

    Symlinked folders are not followed; nothing below a found zarr group is searched.
    """
    root_real = Path(root).resolve(strict=True)
    found: dict[str, list[str]] = {"stores": [], "results": [], "manifests": []}
    for dirpath, dirnames, filenames in os.walk(root_real, followlinks=False):
        here = Path(dirpath)
        found["manifests"] += [str((here / f).relative_to(root_real)) for f in filenames
                               if f.endswith(".jsonl") and not (here / f).is_symlink()]
        depth = len(here.relative_to(root_real).parts)
        # a zarr.json that is itself a symlink out of ROOT is not read
        meta = _zarr_meta(here) if here != root_real and _under((here / "zarr.json").resolve(), root_real) else None
        if meta is not None:
            rel = str(here.relative_to(root_real))
            if _is_store(meta):
                found["stores"].append(rel)
            elif _is_results(here, meta):
                found["results"].append(rel)
            dirnames.clear()
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and depth < max_depth)
    return {k: sorted(v) for k, v in found.items()}
