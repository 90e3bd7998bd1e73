"""Reviewing a search: the HTML report rendered in a real browser, the PNG plots, a terminal front that fits."""

import shutil
import subprocess

import pytest
from helpers import synthetic_run

from configaformer_search import console
from configaformer_search.cli import main
from configaformer_search.review import read_review
from configaformer_search.storage import default_storage, read_study
from configaformer_search.tables import trials_frame


def external_resources(page: str) -> list[str]:
    """The src and href of every script, link, img and iframe tag (script text itself is not parsed as tags)."""
    from html.parser import HTMLParser

    found = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.extend(v for k, v in attrs if tag in ("script", "link", "img", "iframe") and k in ("src", "href") and v)

    Tags().feed(page)
    return found


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """A run folder of 40 synthetic trials, shared by the tests (each writes files of its own into it)."""
    return synthetic_run(tmp_path_factory.mktemp("report"))[0]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no Chromium on this machine (apt-get install chromium): the report cannot be rendered")


@pytest.mark.slow
def test_the_report_renders_offline_with_its_plots_and_every_measured_trial(out, capsys):
    assert main(["report", str(out)]) == 0
    report = out / "report.html"
    assert not external_resources(report.read_text())  # nothing to fetch: it opens offline
    dom = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=15000",
                          "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    study = read_study(default_storage(out))
    measured = [t for t in study.trials if t.finished and t.outcome.counts]
    assert len(measured) == 40
    for plot in ("plot-front", "plot-hypervolume", "plot-importance-val_loss"):
        start = dom.index(f'id="{plot}"')
        assert "main-svg" in dom[start:start + 20000], plot  # plotly drew it
    for trial in measured:
        assert f'data-trial="{trial.number}"' in dom
    assert "nan_loss" in dom  # failures with their reasons


def test_front_and_trials_fit_100_columns(out, capsys):
    for command in (["front", str(out)], ["trials", str(out)]):
        assert main(command) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines and max(map(len, lines)) <= 100, command
    assert main(["front", str(out), "--all"]) == 0  # every column, past the terminal's width
    assert max(map(len, capsys.readouterr().out.splitlines())) > 100


def test_png_plots_number_the_front_and_say_which_way_is_better(out, capsys):
    assert main(["plot", str(out)]) == 0
    assert (out / "front.png").stat().st_size > 10_000 and (out / "front_hypervolume.png").exists()
    review = read_review(default_storage(out))
    assert review.front and all(t.on_front == (t.number in {f.number for f in review.front}) for t in review.trials)
    assert [o.label for o in review.objectives] == ["val_loss (nats/token)", "peak_mem_mb (MiB)", "latency_ms (ms)"]
    assert review.objectives[0].better == "lower is better"
    assert review.hypervolume[-1][1] >= review.hypervolume[0][1]


def test_exports_are_world_readable(out, capsys):
    assert main(["export", str(out), "--knee"]) == 0
    assert (out / "best.yaml").stat().st_mode & 0o777 == 0o644


def test_the_console_renderer_fits_a_width_and_joins_the_params_into_one_column(out):
    frame = trials_frame(read_review(default_storage(out)))
    assert {"param:width", "param:heads", "param:position"} <= set(frame)
    for width in (80, 100, 140):
        text = console.fitted(frame, ("state", "val_loss", "reason"), width=width)
        lines = text.splitlines()
        assert len(lines) == len(frame) + 2 and max(map(len, lines)) <= width
        assert lines[0].split()[-1] == "config" and lines[1].startswith("number") and "width=" in text and "param:" not in text
    header = console.fitted(frame, ("state", "val_loss", "reason"), width=140).splitlines()[0].split()
    assert header[:3] == ["state", "val_loss", "reason"]
    cut = console.fitted(frame, ("state", "val_loss", "reason"), width=60).splitlines()
    assert any(line.endswith("…") for line in cut)  # a config longer than the room left is cut, and says so
    every = console.table(frame)
    assert "param:width" in every and "<NA>" not in every and "NaN" not in every  # blanks where a trial has no value


def test_a_predicted_loss_without_a_checked_interval_is_printed_alone():
    import pandas as pd

    frame = pd.DataFrame({"val_loss_at_target": [1.5, 1.625], "val_loss_at_target_sd": [None, 0.12],
                          "param:width": [64, 96]}, index=pd.Index([1, 2], name="number"))
    lines = console.fitted(frame, ("val_loss_at_target",), width=100).splitlines()
    assert "1.5 " in lines[2] and "±" not in lines[2] and "1.625 ± 0.12" in lines[3]
