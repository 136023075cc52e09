"""The diff as a reviewer gets it: Markdown for a pull-request comment, or JSON for tools; and
the reviewed acknowledgements of breaking changes (contracts/acknowledged-changes.yaml):

    - rule: FIELD_NO_DELETE_UNLESS_NUMBER_RESERVED
      element: knowledge.v1.Document.summary
      reason: never filled by any server; removed before any client used it
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from contracts.diff.rules import BREAKING, REVIEW, SAFE, Change
from contracts.generate import ROOT

ACKNOWLEDGEMENTS = ROOT / "contracts" / "acknowledged-changes.yaml"
HEADINGS = {BREAKING: "Breaking", REVIEW: "For a human to judge", SAFE: "Safe (additive)"}


@dataclass(frozen=True)
class Acknowledgement:
    rule: str
    element: str
    reason: str

    def covers(self, change: Change) -> bool:
        return change.rule == self.rule and change.element == self.element


def load_acknowledgements(path: Path = ACKNOWLEDGEMENTS) -> list[Acknowledgement]:
    if not path.exists():
        return []
    entries = yaml.safe_load(path.read_text()) or []
    found = []
    for entry in entries:
        if not entry.get("reason", "").strip():
            what = f"{entry.get('rule')} {entry.get('element')}"
            raise ValueError(f"{path}: the acknowledgement of {what} gives no reason")
        found.append(Acknowledgement(entry["rule"], entry["element"], entry["reason"].strip()))
    return found


def unacknowledged(changes: Iterable[Change], acknowledgements: list[Acknowledgement]) -> list[Change]:
    return [c for c in changes if c.severity == BREAKING and not any(a.covers(c) for a in acknowledgements)]


def where(location: object) -> str:
    return f"proto/{location}" if location else "—"


def markdown(changes: list[Change], base: str, head: str, acknowledgements: list[Acknowledgement]) -> str:
    open_breaks = unacknowledged(changes, acknowledgements)
    counts = {severity: sum(c.severity == severity for c in changes) for severity in HEADINGS}
    lines = [
        f"## Contract changes: `{base}` → `{head}`",
        "",
        f"{counts[BREAKING]} breaking ({len(open_breaks)} not acknowledged), {counts[REVIEW]} to judge, "
        f"{counts[SAFE]} safe.",
    ]
    if not changes:
        lines += ["", "No contract changes."]
    for severity, heading in HEADINGS.items():
        listed = [c for c in changes if c.severity == severity]
        if not listed:
            continue
        lines += ["", f"### {heading}", ""]
        if severity == SAFE:
            lines += [f"- `{c.element}`: {c.message} ({where(c.head)})" for c in listed]
            continue
        lines += ["| category | rule | element | change | base | head | breaks |", "|---|---|---|---|---|---|---|"]
        for change in listed:
            acknowledged = next((a for a in acknowledgements if a.covers(change)), None)
            note = f" — acknowledged: {acknowledged.reason}" if acknowledged else ""
            lines.append(
                f"| {change.category} | {change.rule} | `{change.element}` | {change.message}{note} | "
                f"{where(change.base)} | {where(change.head)} | {'; '.join(change.breaks) or '—'} |"
            )
    return "\n".join(lines) + "\n"


def as_json(changes: list[Change], base: str, head: str, acknowledgements: list[Acknowledgement]) -> str:
    open_breaks = unacknowledged(changes, acknowledgements)
    document = {
        "base": base,
        "head": head,
        "changes": [{**c.to_json(), "acknowledged": c.severity == BREAKING and c not in open_breaks} for c in changes],
        "unacknowledged_breaking": len(open_breaks),
    }
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"
