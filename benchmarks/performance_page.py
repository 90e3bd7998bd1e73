"""Write docs/performance.md from the benchmark results files, benchmarks/results/*.json.

Each results file is written by a benchmark script through benchmarks/common.write_results (keys benchmark, date,
command, machine, device, versions, targets {name: {value, goal, met, rule}}, figures). The page has one section per
file, sorted by benchmark name: its command, date, machine and device, the targets with whether each is met, and the
figures (a list of rows as a table). A JSON file without a "benchmark" key is not a results file and is skipped.
Nothing on the page is typed by hand: rerun this script after a benchmark.

    python benchmarks/performance_page.py [--results benchmarks/results] [--output docs/performance.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "performance.md"


def load_results(folder: Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[tuple[Path, str]]]:
    """The results documents in `folder` (sorted by benchmark name, then file name), and the .json files skipped, each
    with why."""
    found, skipped = [], []
    for path in sorted(folder.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            skipped.append((path, f"not readable JSON ({type(err).__name__})"))
            continue
        if not isinstance(document, dict) or "benchmark" not in document:
            skipped.append((path, "no 'benchmark' key: not a results file"))
            continue
        found.append((path, document))
    found.sort(key=lambda item: (str(item[1]["benchmark"]), item[0].name))
    return found, skipped


def cell(value: Any) -> str:
    """A value as a table cell: numbers to four significant digits (whole numbers with thousands separators), yes/no,
    nested values as compact JSON, '|' escaped."""
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        text = f"{value:.4g}" if value == value else "nan"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, default=str)
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict[str, Any]], columns: Optional[list[str]] = None) -> list[str]:
    """A Markdown table of dict rows; the columns in order of first appearance."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [c for c in row if c not in columns]
    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return lines


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _nested(row: dict[str, Any]) -> bool:
    return any(_is_rows(v) or isinstance(v, dict) for v in row.values())


def figures_lines(figures: Any, title: str = "") -> list[str]:
    """The figures: scalars (and lists of scalars) in one table, each list of rows as a table of its own, nested
    mappings as subsections."""
    if not isinstance(figures, dict):
        return [f"{title}: {cell(figures)}", ""] if title else [cell(figures), ""]
    lines: list[str] = []
    scalars = {k: v for k, v in figures.items() if not _is_rows(v) and not isinstance(v, dict)}
    if scalars:
        if title:
            lines += [f"*{title}*", ""]
        lines += table([{"figure": k, "value": v} for k, v in scalars.items()]) + [""]
    for key, value in figures.items():
        name = f"{title}.{key}" if title else key
        if isinstance(value, dict):
            lines += figures_lines(value, name)
        elif _is_rows(value):
            if any(_nested(row) for row in value):  # rows that hold rows of their own: one subsection each
                for i, row in enumerate(value):
                    lines += figures_lines(row, f"{name}[{i}]")
            else:
                lines += [f"*{name}*", ""] + table(value) + [""]
    return lines


def targets_lines(targets: dict[str, Any]) -> list[str]:
    if not targets:
        return ["No targets recorded.", ""]
    rows = []
    for name, entry in targets.items():
        entry = entry if isinstance(entry, dict) else {"value": entry}
        met = entry.get("met")
        rows.append({"target": name, "measured": entry.get("value"), "rule": entry.get("rule"), "goal": entry.get("goal"),
                     "status": "met" if met is True else "not met" if met is False else ""})
    return table(rows, ["target", "measured", "rule", "goal", "status"]) + [""]


def command_text(command: str) -> str:
    """The command as recorded (script name and arguments), run from the repository root."""
    first = command.split(" ", 1)[0]
    return f"python benchmarks/{command}" if first.endswith(".py") and "/" not in first else command


def section(path: Path, document: dict[str, Any]) -> list[str]:
    device = document.get("device") or "unknown device"
    if document.get("cuda"):
        device += f", CUDA {document['cuda']}"
    versions = document.get("versions") or {}
    software = ", ".join(([f"Python {document['python']}"] if document.get("python") else [])
                         + [f"{k} {v}" for k, v in versions.items()])
    lines = [f"## {document['benchmark']}", "",
             f"- file: `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`",
             f"- command: `{command_text(str(document.get('command', '')))}`",
             f"- date: {document.get('date', 'not recorded')}",
             f"- machine: {document.get('machine', 'not recorded')}",
             f"- device: {device}"]
    if software:
        lines.append(f"- software: {software}")
    lines += ["", "### Targets", ""] + targets_lines(document.get("targets") or {})
    lines += ["### Figures", ""] + (figures_lines(document.get("figures")) if document.get("figures") else ["No figures recorded.", ""])
    return lines


def writers(folder: Path) -> Iterable[str]:
    """The benchmark scripts that write a results file."""
    for script in sorted(folder.glob("*.py")):
        if script.name not in ("common.py", Path(__file__).name) and "write_results(" in script.read_text():
            yield script.name


def render(results: list[tuple[Path, dict[str, Any]]], scripts: Iterable[str]) -> str:
    lines = ["# Performance", "",
             "This page is written by `benchmarks/performance_page.py` from the results files in `benchmarks/results/`,",
             "each written by a benchmark script through `benchmarks/common.write_results`. Every figure on it is copied",
             "from those files, with the command, date, machine and device that produced it. To bring it up to date, run",
             "a benchmark, then `python benchmarks/performance_page.py`.", ""]
    scripts = list(scripts)
    if scripts:
        lines += ["Benchmarks that write a results file: " + ", ".join(f"`benchmarks/{s}`" for s in scripts) + ".", ""]
    if not results:
        lines += ["No results file is present in `benchmarks/results/` yet, so there are no figures to show.", ""]
        return "\n".join(lines)
    rows = []
    for path, document in results:
        targets = document.get("targets") or {}
        met = sum(1 for t in targets.values() if isinstance(t, dict) and t.get("met") is True)
        rows.append({"benchmark": document["benchmark"], "date": str(document.get("date", ""))[:10],
                     "device": document.get("device"), "targets met": f"{met} of {len(targets)}" if targets else ""})
    lines += table(rows) + [""]
    for path, document in results:
        lines += section(path, document)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of results files (default benchmarks/results)")
    parser.add_argument("--output", type=Path, default=PAGE, help="page to write (default docs/performance.md)")
    args = parser.parse_args(argv)
    results, skipped = load_results(args.results)
    for path, why in skipped:
        print(f"skipped {path.name}: {why}", file=sys.stderr)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(results, writers(Path(__file__).resolve().parent)))
    print(f"wrote {args.output} ({len(results)} results file{'' if len(results) == 1 else 's'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
