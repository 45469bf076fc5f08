"""The diagnosis result: a typed, versioned record written as JSON, and its reader (refuses newer versions)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

SCHEMA = "visblind.diagnosis"
SCHEMA_VERSION = 1
RESULT_FILE = "diagnosis.json"


@dataclass(frozen=True)
class Effect:
    """One causal test: the share of BEFORE's visual dependence (lost in AFTER) that an edit of AFTER restores."""

    name: str  # "swap projector", "patch visual after layer 1", ...
    kind: str  # "swap" (a component of BEFORE put into AFTER), "patch" (BEFORE's residual at some positions), "control"
    target: str  # the component names swapped, or "visual@L" / "last_prompt@L"
    restored: float  # point estimate; 1 = all of the lost visual dependence back, 0 = none
    low: float
    high: float
    vd: dict[str, float]  # visual dependence per language under the edit
    n_params: int = 0  # parameters swapped (ties are broken toward the smaller component)
    evidence: list[str] = field(default_factory=list)  # observational lines about this candidate


@dataclass(frozen=True)
class Diagnosis:
    """What `probe diagnose` found: behaviour, the ranked attribution, the named cause and how it was decided."""

    before: str
    after: str
    manifest: str
    examples: int
    units: int
    share: float  # the stated share a single cause must restore (lower end of its interval), fixed before the run
    behaviour: dict[str, dict[str, float]]  # "before"/"after" -> lang -> visual dependence
    ranked: list[Effect]  # component swaps, highest restored share first (ties: fewer parameters first)
    patches: list[Effect]  # residual patches: where the difference lives (not ranked as causes)
    controls: list[Effect]  # swap of everything: must restore all (exactly BEFORE)
    named: str  # the named cause, or "no single cause"
    reason: str
    verdict: list[str] = field(default_factory=list)  # the comparison report's lines (observational)
    report: str = ""  # the HTML report (relative to the result's folder)
    dashboard: str = ""  # how to open the dashboard's overview on the pair
    config: dict = field(default_factory=dict)
    schema: str = SCHEMA
    version: int = SCHEMA_VERSION


def write_diagnosis(result: Diagnosis, folder: str | Path) -> Path:
    """Write `folder/diagnosis.json` (atomically: a temporary file renamed into place)."""
    path = Path(folder) / RESULT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(result), indent=1, ensure_ascii=False, allow_nan=True), encoding="utf-8")
    tmp.replace(path)
    return path


def read_diagnosis(path: str | Path) -> Diagnosis:
    """Read a diagnosis.json (or the folder holding it); refuses another schema or a newer version in one line."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable diagnosis ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a diagnosis (schema {data.get('schema') if isinstance(data, dict) else None!r})")
    version = data.get("version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ValueError(f"{path}: diagnosis version {version!r} is newer than this visblind reads ({SCHEMA_VERSION}); "
                         "upgrade visblind")
    known = {f.name for f in fields(Diagnosis)}
    data = {k: v for k, v in data.items() if k in known}
    for key in ("ranked", "patches", "controls"):
        data[key] = [Effect(**e) for e in data.get(key, [])]
    return Diagnosis(**data)
