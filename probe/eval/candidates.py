"""Where each example's candidate answers come from, and so which scoring rule its row uses.

Per (lang, question_type), in order: every example's `labels['choices']`; else the choices file's list;
else the distinct reference answers of the manifest for that (lang, question_type) when there are
2..max_choices of them; else open-ended scoring (greedy decoding, normalised exact match).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from probe.data.example import Example
from probe.eval.normalise import normalise

SOURCES: tuple[str, ...] = ("labels", "file", "manifest", "function", "none")
ChoicesTable = Mapping[tuple[str, str], Sequence[str]]


@dataclass(frozen=True)
class Candidates:
    """How one example is scored: ranked among `choices` (source says where they came from), or open-ended."""

    choices: tuple[str, ...] | None
    source: str

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"Candidates.source must be one of {SOURCES}, got {self.source!r}")
        if (self.choices is None) != (self.source == "none"):
            raise ValueError("Candidates: choices must be given exactly when source is not 'none'")

    @property
    def rule(self) -> str:
        """'ranked' (best of K candidates, chance 1/K) or 'open' (greedy, normalised exact match)."""
        return "open" if self.choices is None else "ranked"


def read_choices_file(path: str | Path) -> dict[tuple[str, str], tuple[str, ...]]:
    """Read a JSON choices file `{lang: {question_type: [answer, ...]}}` into (lang, question_type) -> answers."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"choices file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected {{lang: {{question_type: [answers]}}}}, got a {type(raw).__name__}")
    table: dict[tuple[str, str], tuple[str, ...]] = {}
    for lang, per_type in raw.items():
        if not isinstance(per_type, dict):
            raise ValueError(f"{path}: [{lang!r}] must map question types to answer lists")
        for qtype, answers in per_type.items():
            if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
                raise ValueError(f"{path}: [{lang!r}][{qtype!r}] must be a list of strings")
            table[(str(lang), str(qtype))] = tuple(answers)
    return table


def checked_choices(choices: Sequence[str], where: str) -> tuple[str, ...]:
    """Choices as a tuple; at least two, none repeated after normalisation (a repeat would make chance not 1/K)."""
    out = tuple(str(c) for c in choices)
    if len(out) < 2:
        raise ValueError(f"{where}: needs at least 2 candidate answers, got {len(out)}")
    seen: dict[str, str] = {}
    for c in out:
        key = normalise(c)
        if not key:  # an empty answer would be ranked like any other
            raise ValueError(f"{where}: candidate {c!r} is empty after normalisation")
        if key in seen:
            raise ValueError(f"{where}: candidates {seen[key]!r} and {c!r} are the same answer after normalisation")
        seen[key] = c
    return out


def plan_candidates(
    examples: Sequence[Example], *, choices_file: str | Path | ChoicesTable | None = None, max_choices: int = 20
) -> list[Candidates]:
    """Candidates of every example (see module docstring); raises when a (lang, question_type) would mix sources."""
    if max_choices < 2:
        raise ValueError(f"max_choices must be >= 2, got {max_choices}")
    if choices_file is None:
        table: ChoicesTable = {}
        file_name = ""
    elif isinstance(choices_file, Mapping):
        table, file_name = choices_file, "choices table"
    else:
        table, file_name = read_choices_file(choices_file), str(choices_file)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault((ex.lang, ex.question_type), []).append(i)
    out: list[Candidates | None] = [None] * len(examples)
    for (lang, qtype), idx in groups.items():
        where = f"lang={lang!r} question_type={qtype!r}"
        given = [i for i in idx if examples[i].labels.get("choices")]
        if given and len(given) < len(idx):
            missing = next(examples[i].id for i in idx if i not in set(given))
            raise ValueError(f"{where}: {len(given)} of {len(idx)} examples have labels.choices but {missing!r} does not; "
                             "one row cannot mix candidate sources (give choices to all or none)")
        if given:
            plans = {i: Candidates(checked_choices(examples[i].labels["choices"],
                                                   f"example {examples[i].id!r} labels.choices"), "labels")
                     for i in idx}
        elif (lang, qtype) in table:
            shared = Candidates(checked_choices(table[(lang, qtype)], f"{file_name} [{lang!r}][{qtype!r}]"), "file")
            plans = dict.fromkeys(idx, shared)
        else:
            answers = sorted({normalise(examples[i].answer): examples[i].answer for i in idx
                              if examples[i].answer is not None}.items())
            blank = next((examples[i] for i in idx if examples[i].answer is not None and not normalise(examples[i].answer)), None)
            if blank is not None:  # it would become a ranked candidate nobody can name
                raise ValueError(f"example {blank.id!r}: answer {blank.answer!r} is empty after normalisation")
            shared = (Candidates(tuple(a for _, a in answers), "manifest") if 2 <= len(answers) <= max_choices
                      else Candidates(None, "none"))
            plans = dict.fromkeys(idx, shared)
        for i, plan in plans.items():
            check_answer(examples[i], plan)
            out[i] = plan
    return out  # type: ignore[return-value]


def check_answer(ex: Example, plan: Candidates) -> None:
    """Raise when a ranked example's reference answer is not among its candidates (it could never be right)."""
    if plan.choices is not None and ex.answer is not None and \
            normalise(ex.answer) not in {normalise(c) for c in plan.choices}:
        raise ValueError(f"example {ex.id!r}: answer {ex.answer!r} is not among its {len(plan.choices)} "
                         f"candidates from {plan.source} (lang={ex.lang!r} question_type={ex.question_type!r})")
