"""The results: a table on stdout (also kept as Markdown) and the whole record as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import Section, Series, fmt


def _cell(series: Series | None, unit: str) -> str:
    if series is None or not series.values:
        return "-"
    if len(series.values) == 1:
        return f"{fmt(series.median, unit)} {unit}"
    return f"{fmt(series.median, unit)} {unit} [{fmt(min(series.values), unit)}-{fmt(max(series.values), unit)}]"


def rows(sections: list[Section]) -> list[list[str]]:
    """Table rows: measurement, agent, floor, ratio, goal, verdict."""
    out = [["measurement", "agent: median [min-max]", "floor: median [min-max]", "ratio", "goal", "result"]]
    for sec in sections:
        if sec.error:
            out.append([f"{sec.title}: {sec.error.splitlines()[0][:90]}", "", "", "", "", "ERROR"])
            continue
        for row in sec.rows:
            verdict = {True: "ok", False: "MISSED", None: ""}[row.ok]
            floor = _cell(row.floor, row.unit)
            if row.floor_label and row.floor is not None:
                floor += f" ({row.floor_label})"
            ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
            out.append([row.label, _cell(row.agent, row.unit), floor, ratio, row.goal, verdict])
    return out


def table(sections: list[Section], markdown: bool = False) -> str:
    """The results as aligned text, or as a Markdown table."""
    data = rows(sections)
    if markdown:
        lines = ["| " + " | ".join(data[0]) + " |", "|" + "---|" * len(data[0])]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in r) + " |" for r in data[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in data) for i in range(len(data[0]))]
    widths[2] = min(widths[2], 60)
    lines = []
    for r in data:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def notes(sections: list[Section]) -> str:
    """Each section's notes, for the text after the table."""
    out = []
    for sec in sections:
        for note in sec.notes:
            out.append(f"- {sec.title.split(' ', 1)[0]} {note}")
    return "\n".join(out)


def write(path: Path, meta: dict[str, Any], sections: list[Section]) -> None:
    """The JSON record: metadata, every section with raw values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"meta": meta, "sections": [s.to_dict() for s in sections]}
    path.write_text(json.dumps(record, indent=1) + "\n")
