"""The one console renderer of the review's tables: four significant digits, blanks for missing values, seed means
with their sd, and the params joined into one 'config' column cut to fit the terminal."""

from __future__ import annotations

from typing import Any, Sequence

from .metrics import SD_SUFFIX, with_sd

CONSOLE_WIDTH = 100  # what the console tables fit by default; --all prints every column


def table(frame: Any) -> str:
    """Every column of a frame, four significant digits, blanks where a trial has no value."""
    blanks = {c: frame[c].astype(object).where(frame[c].notna(), "") for c in frame if frame[c].dtype.kind in "iub"
              and frame[c].hasnans}  # nullable ints, whose <NA> to_string's na_rep does not reach
    return frame.assign(**blanks).to_string(float_format=lambda v: f"{v:.4g}", na_rep="") + "\n"


def fitted(frame: Any, keep: Sequence[str], width: int = CONSOLE_WIDTH) -> str:
    """The columns in `keep` that the frame has, then its params joined into one 'config' column (width=64
    depth=2 ...), cut so that every line fits `width` characters."""
    import pandas as pd

    params = [c for c in frame if c.startswith("param:")]
    shown = frame[[c for c in keep if c in frame]].copy()
    for column in shown:  # a seed-confirmed mean with its sd
        if column + SD_SUFFIX in frame and shown[column].dtype.kind == "f":
            shown[column] = ["" if v != v else with_sd(v, sd) for v, sd in zip(shown[column], frame[column + SD_SUFFIX])]
    shown = shown[[c for c in shown if not shown[c].isin([None, False, ""]).all() and not shown[c].isna().all()]]
    if "duration" in shown:
        shown["duration"] = shown["duration"].map(lambda v: "" if v is None or v != v else f"{v:.1f} s")
    if "message" in shown:
        shown["message"] = shown["message"].map(lambda v: v if not isinstance(v, str) or len(v) <= 28 else v[:27] + "…")
    lines = table(shown).splitlines()
    table_width = max(len(line) for line in lines)
    room = width - table_width - 2
    if not params or room < 12:
        return "\n".join(lines) + "\n"
    configs = [" ".join(f"{name[6:]}={value}" for name, value in zip(params, row) if not pd.isna(value))
               for row in frame[params].itertuples(index=False)]
    cells = ["config", *[""] * (len(lines) - len(configs) - 1), *(t if len(t) <= room else t[: room - 1] + "…" for t in configs)]
    return "".join(f"{line.ljust(table_width)}  {cell}".rstrip() + "\n" for line, cell in zip(lines, cells))
