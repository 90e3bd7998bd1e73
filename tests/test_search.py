"""configaformer-search end to end: real Ray (one local instance), real SQLite studies, real training."""

import datetime
import json
import os
import signal
import subprocess
import time

import optuna
import pandas as pd
import pytest
from helpers import TINY_SPACE, write_space
from searches import cli, in_training, measured, study_or_none

from configaformer import ConfigaFormer
from configaformer.io import load_document
from configaformer_search import outcome
from configaformer_search.cli import main
from configaformer_search.space import load_space
from configaformer_search.storage import StudyStore, default_storage, open_storage, read_study

FAST = TINY_SPACE.replace("tokens: 49152", "tokens: 8192").replace("eval_tokens: 4096", "eval_tokens: 1024")


def study_of(out):
    return read_study(default_storage(out))


def optuna_front(out, name="tiny"):
    """The front as Optuna itself sees the study: its best trials' numbers."""
    study = optuna.load_study(study_name=name, storage=default_storage(out))
    return sorted(t.number for t in study.best_trials)


@pytest.mark.slow
def test_search_makes_a_front_plots_and_an_export_that_rebuilds(ray_local, tmp_path, capsys):
    space = write_space(tmp_path, FAST)
    out = tmp_path / "run"
    assert main(["run", str(space), "--trials", "4", "--out", str(out), "--sampler", "tpe"]) == 0
    printed = capsys.readouterr().out
    assert "[4/4]" in printed and "front " in printed and "4 configs measured: 4 complete" in printed
    assert f"run folder {out}, study {out / 'study.db'}\n" in printed  # the study named by its file
    study = study_of(out)
    assert len([t for t in measured(study) if t.state == "COMPLETE"]) == 4 and not study.in_state("RUNNING")
    assert study.metric_names == ("val_loss", "peak_mem_mb", "latency_ms")
    assert study.directions == ("minimize", "minimize", "minimize")
    assert study.user_attrs["sampler"] == "tpe" and study.user_attrs["trials"] == 4  # the run's settings, for the report
    recorded = study.trials[0].user_attrs
    assert {"flops", "params", "nonemb_params", "val_bpb", "latency_cv", "config_key", "model_config"} <= set(recorded)
    for name in ("trials.csv", "front.csv", "front.png", "front_hypervolume.png", "report.html", "best.yaml"):
        assert (out / name).stat().st_size > 0, name

    best = load_document(out / "best.yaml")
    front_numbers = sorted(int(n) for n in pd.read_csv(out / "front.csv")["number"])
    assert front_numbers == optuna_front(out)  # the front Optuna keeps agrees with ours
    assert best["metadata"]["trial"] in front_numbers
    assert ConfigaFormer.from_config(out / "best.yaml", verbose=False).num_params() == best["metadata"]["metrics"]["params"]

    assert main(["front", str(out), "--format", "json"]) == 0
    front = json.loads(capsys.readouterr().out)
    assert front and {"number", "val_loss", "peak_mem_mb", "latency_ms", "flops", "params"} <= set(front[0])
    assert main(["trials", str(out), "--format", "csv"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5
    assert main(["trials", str(out), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["val_loss"] for row in rows] == pytest.approx([t.values[0] for t in study.trials])
    assert [row["state"] for row in rows] == [t.state for t in study.trials]
    datetime.datetime.fromisoformat(rows[0]["started_at"])
    assert main(["trials", str(out), "--format", "parquet", "-o", str(tmp_path / "trials.parquet")]) == 0
    table = pd.read_parquet(tmp_path / "trials.parquet")  # each objective once, measured or told
    assert table.columns.is_unique and list(table.columns[:4]) == ["state", "val_loss", "peak_mem_mb", "latency_ms"]
    assert main(["export", str(out), "--knee", "-o", str(tmp_path / "knee.json")]) == 0
    assert "exported trial #" in capsys.readouterr().out
    ConfigaFormer.from_config(tmp_path / "knee.json", verbose=False)
    loosest = max(t["latency_ms"] for t in front)
    assert main(["export", str(out), "--pick", f"latency_ms<={loosest}", "-o", str(tmp_path / "pick.yaml")]) == 0
    assert main(["plot", str(out), "-o", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").stat().st_size > 0

    # Running the same command again has nothing left to do and loses nothing.
    capsys.readouterr()
    assert main(["run", str(space), "--trials", "4", "--out", str(out), "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert len(study_of(out).trials) == len(study.trials)


@pytest.mark.slow
def test_a_front_that_nothing_meets_leaves_no_winner_behind(ray_local, tmp_path, capsys):
    space = write_space(tmp_path, FAST + "constraints: {peak_mem_mb: {max: 0.001}}\n")  # every trial breaks it
    out = tmp_path / "run"
    out.mkdir()
    for stale in ("best.yaml", "front.csv", "front_hypervolume.png"):  # as another space's search would leave them
        (out / stale).write_text("stale")
    assert main(["run", str(space), "--trials", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "running 1 trial of 1," in printed and "\n1 config measured: 1 complete\n" in printed
    assert "Pareto front: empty, every complete trial breaks a constraint" in printed
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["front.png", "ray.log", "report.html", "study.db", "trials.csv"]
    assert "Your study does not have" not in capsys.readouterr().err
    study = study_of(out)
    assert [t.state for t in study.trials] == ["COMPLETE"] and not study.trials[0].feasible
    assert optuna_front(out) == []  # Optuna, told the constraint, keeps no best trial either


@pytest.mark.slow
def test_refusals_and_repeats_cost_no_budget_and_optuna_agrees_on_the_front(ray_local, tmp_path, capsys):
    # Two configs in all: heads 2 trains, heads 3 is impossible (32 wide). Every later suggestion repeats one.
    space_text = FAST.replace("{choice: [32, 48]}", "{choice: [32]}").replace("{choice: [2, 4]}", "{choice: [2, 3]}") \
        .replace("{choice: [rope, alibi]}", "{choice: [rope]}").replace("{choice: [4, 8], if", "{choice: [8], if")
    space = write_space(tmp_path, space_text)
    out = tmp_path / "run"
    assert main(["run", str(space), "--trials", "8", "--out", str(out), "--sampler", "random", "--concurrency", "1", "-v"]) == 0
    printed = capsys.readouterr().out
    study = study_of(out)
    trials = study.trials
    own = [t for t in trials if t.outcome.reused_from is None and t.outcome.kind.name != "withdrawn"]
    twins = [t for t in trials if t.outcome.reused_from is not None]
    assert sorted(t.state for t in own) == ["COMPLETE", "FAIL"]  # each config measured or refused once
    failed = next(t for t in own if t.state == "FAIL")
    assert failed.outcome.kind.name == "rejected" and "not divisible by 3 heads" in failed.user_attrs["message"]
    assert len(measured(study)) == 1  # the refusal cost no budget
    assert len(twins) >= 100  # told their twin's result without counting, until the space was found exhausted
    assert {t.state for t in twins} == {"PRUNED", "FAIL"} and all(t.values is None for t in twins)
    assert {t.user_attrs["reused_from"] for t in twins} == {t.number for t in own}
    assert not study.in_state("RUNNING")
    assert "the space looks exhausted at 1 measured trial)" in printed
    assert printed.count("reused, not counted") == len(twins)
    assert f"; {len(twins)} repeats of a settled config reused its result" in printed
    assert main(["front", str(out), "--format", "json"]) == 0
    front = [row["number"] for row in json.loads(capsys.readouterr().out)]
    assert front == optuna_front(out) == [next(t.number for t in own if t.values)]
    assert main(["trials", str(out)]) == 0  # the console table: why each trial failed, whose result it reused
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:7] == ["state", "val_loss", "peak_mem_mb", "latency_ms", "reason", "message", "reused_from"]
    row = next(line.split() for line in table[2:] if line.split()[0] == str(failed.number))
    assert row[1:3] == ["FAIL", "rejected"] and "config_key" not in table[0]


@pytest.mark.slow
def test_trials_running_at_once_never_train_one_config_twice(ray_local, tmp_path):
    # One config in all, two trials at a time: the second suggestion repeats the first while it trains, so it waits
    # for that trial's result instead of training the same config beside it.
    space_text = FAST.replace("{choice: [32, 48]}", "{choice: [32]}").replace("{choice: [2, 4]}", "{choice: [2]}") \
        .replace("{choice: [rope, alibi]}", "{choice: [rope]}").replace("{choice: [4, 8], if", "{choice: [8], if")
    out = tmp_path / "run"
    assert main(["run", str(write_space(tmp_path, space_text)), "--trials", "4", "--out", str(out), "--sampler", "random",
                 "--concurrency", "2", "-q"]) == 0
    trials = study_of(out).trials
    (own,) = [t for t in trials if t.outcome.reused_from is None and t.outcome.kind.name != "withdrawn"]
    twins = [t for t in trials if t.outcome.reused_from is not None]
    assert own.state == "COMPLETE" and len(twins) >= 100
    assert all(t.user_attrs["reused_from"] == own.number and t.state == "PRUNED" for t in twins)
    assert any(t.datetime_start < own.datetime_complete for t in twins)  # asked while the first one trained


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["killed", "ctrl_c", "sigterm"])
def test_stopped_search_resumes_without_losing_or_duplicating_trials(ray_local, tmp_path, stop):
    # Tiny models trained on 4x the usual tokens (a few seconds a trial), so that the stop lands while one trains.
    space = write_space(tmp_path, TINY_SPACE.replace("{choice: [32, 48]}", "{choice: [32, 48, 64]}")
                        .replace("tokens: 49152", "tokens: 196608"))
    out = tmp_path / "run"
    command = cli("run", str(space), "--trials", "3", "--out", str(out), "--concurrency", "1", "--address", ray_local,
                  "--sampler", "random")
    with open(tmp_path / "stderr.txt", "w") as stderr:
        # As from a terminal: Ctrl-C's SIGINT at its default, whatever this test process inherited (Ray may leave
        # it ignored here, and a child started with SIGINT ignored never raises KeyboardInterrupt).
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    storage = default_storage(out)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if not (out / ".tune").exists():  # the search has made its study and started Ray Tune: safe to read
                continue
            study = study_or_none(storage)
            # A trial holding a place of the budget, RUNNING for over half a second, is one in training.
            if study and study.complete and in_training(storage):
                break
        else:
            pytest.fail("the search never had a finished and a running trial at once")
    finally:
        # SIGINT to the process group is what Ctrl-C sends; SIGTERM to the driver alone, what timeout and Slurm send
        os.killpg(process.pid, stop) if stop != signal.SIGTERM else process.send_signal(stop)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    trials = read_study(storage).trials
    before = {t.number: t.values for t in trials if t.state == "COMPLETE"}
    if stop == signal.SIGKILL:
        assert (out / ".tune").is_dir()  # Ray Tune's records of the killed run stay in its folder, not in /tmp
    else:  # stopped at once and cleanly: its own running trials marked, its tables written, one line said
        err = (tmp_path / "stderr.txt").read_text()
        assert process.returncode == 128 + stop and "Traceback" not in err and "SIGTERM" not in err, err[-3000:]
        word = "terminated" if stop == signal.SIGTERM else "interrupted"
        assert err.strip() == f"configaformer-search: {word} with {len(before)} of 3 trials measured; run the same command again to resume"
        assert not [t for t in trials if t.state == "RUNNING"]
        assert any(t.outcome.kind.name == "interrupted" for t in trials)
        assert (out / "trials.csv").exists() and not (out / ".tune").exists()

    assert main(["run", str(space), "--trials", "3", "--out", str(out), "--concurrency", "1", "-q"]) == 0
    study = study_of(out)
    complete = [t for t in study.trials if t.state == "COMPLETE"]
    interrupted = [t for t in study.trials if t.outcome.kind.name == "interrupted"]
    assert len([t for t in complete if t.outcome.reused_from is None]) == 3 and len(interrupted) >= 1
    assert len(measured(study)) == 3 and not [t for t in interrupted if t.outcome.counts]  # owed again, not counted
    assert all(t.state == "FAIL" for t in interrupted) and not study.in_state("RUNNING")
    assert {n: v for n, v in ((t.number, t.values) for t in complete) if n in before} == before  # nothing lost
    keys = [t.user_attrs["config_key"] for t in measured(study)]
    assert len(set(keys)) == len(keys)  # no config trained twice
    assert len({t.number for t in study.trials}) == len(study.trials)
    assert not (out / ".tune").exists()


@pytest.mark.parametrize("argv, why", [
    (["run", "{tmp}/missing.yaml"], "missing.yaml: file not found"),
    (["run", "{tmp}/bad.yaml"], "bad.yaml: objectives.accuracy: unknown metric"),
    (["run", "{tmp}/space.yaml", "--trials", "0"], "--trials: expected a positive count"),
    (["run", "{tmp}/space.yaml", "--heartbeat-grace", "5"], "--heartbeat-grace: expected seconds >= 10"),
    (["run", "{tmp}/space.yaml", "--storage", "nosuchdb://x"], "--storage nosuchdb://x:"),
    (["run", "{tmp}/space.yaml", "--address", "127.0.0.1:1"], "--address 127.0.0.1:1: nothing answers there"),
    (["front", "{tmp}/nowhere"], "nowhere: not a run folder (no study.db)"),
    (["trials", "{tmp}/nowhere", "--format", "parquet"], "nowhere: not a run folder"),
    (["export", "{tmp}/nowhere", "--knee"], "nowhere: not a run folder"),
    (["plot", "{tmp}/nowhere"], "nowhere: not a run folder"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, why):
    write_space(tmp_path, FAST)
    write_space(tmp_path, FAST.replace("val_loss: min,", "accuracy: max,"), "bad.yaml")
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv + ["--out", str(tmp_path / "out")] if argv[0] == "run" else argv) == 2
    err = capsys.readouterr().err
    assert why in err and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_resuming_with_other_choices_is_refused_by_name_before_any_trial(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    space = load_space(write_space(tmp_path, FAST))
    store = StudyStore.open(open_storage(default_storage(out)), space.name, space.objectives,
                            distributions=space.distributions())
    trial, trial_id = store.ask()
    space.sample(trial)
    store.record(trial, trial_id, outcome.measured(val_loss=2.0, peak_mem_mb=10.0, latency_ms=1.0, config_key="k"))
    store.close()
    widened = write_space(tmp_path, FAST.replace("{choice: [32, 48]}", "{choice: [32, 48, 64]}"), "widened.yaml")
    assert main(["run", str(widened), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"configaformer-search: error: width: the study 'tiny' in {out / 'study.db'} ") and err.count("\n") == 1
    assert "drew it from choices [32, 48]; the space now gives choices [32, 48, 64] (use --fresh" in err
    assert len(study_of(out).trials) == 1 and not (out / "trials.csv").exists()


def test_a_second_search_in_a_busy_run_folder_is_refused(tmp_path, capsys):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as held:  # what a search running in that folder holds
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["run", str(write_space(tmp_path, FAST)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: another command is running in this folder" in err and err.count("\n") == 1
    assert not (out / "study.db").exists()


def test_export_refuses_unknown_trials_and_impossible_picks(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    store = StudyStore.open(open_storage(default_storage(out)), "tiny", {"val_loss": "min", "latency_ms": "min"})
    for record in (outcome.measured(val_loss=1.0, latency_ms=2.0,
                                    model_config={"dim_model": 16, "vocab_size": 8, "layers": [{"type": "FFN"}]}),
                   outcome.failed("oom", "ran out of memory at batch 16")):
        store.record(*store.ask(), record)
    store.close()
    cases = [(["--trial", "7"], "--trial 7: not in the study (trials 0-1)"),
             (["--trial", "1"], "--trial 1: it did not complete (oom: ran out of memory at batch 16): nothing to export"),
             (["--pick", "latency_ms<=1"], "--pick: no trial on the front of 1 meets 'latency_ms<=1'"),
             (["-o", str(tmp_path / "best.txt")], "expected a .yaml, .yml or .json path")]
    for args, why in cases:
        assert main(["export", str(out)] + args) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1
    assert not (out / "best.yaml").exists()
    assert main(["export", str(out), "--trial", "0"]) == 0
    assert ConfigaFormer.from_config(out / "best.yaml", verbose=False).num_params() > 0
