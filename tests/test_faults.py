"""The faults a shared cluster brings: several drivers on one study, a worker killed mid-trial, a damaged or full
storage, a closed pipe, a candidate far too large. Real Ray, real SQLite; the study stays the truth."""

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from helpers import TINY_SPACE, synthetic_run, write_space

from configaformer_search.cli import main
from configaformer_search.study import default_storage, load_existing, measured

FAST = TINY_SPACE.replace("tokens: 49152", "tokens: 8192").replace("eval_tokens: 4096", "eval_tokens: 1024")
SLOW = TINY_SPACE.replace("tokens: 49152", "tokens: 196608")  # a few seconds a trial: long enough to be hit


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "configaformer_search.cli", *args]


def wait_for(condition, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def trials_of(url: str) -> list:
    try:
        return load_existing(url).trials if optuna.study.get_all_study_summaries(url) else []
    except Exception:  # the study is being created
        return []


@pytest.mark.parametrize("second_starts, draw_processes", [("together", 1), ("after_a_trial", 0)])
def test_two_drivers_on_one_study_measure_the_budget_once(ray_local, tmp_path, second_starts, draw_processes):
    space = write_space(tmp_path, FAST.replace("{choice: [2, 4]}", "{choice: [2, 4, 8]}")
                        .replace("sampler: random}", f"sampler: random, draw_processes: {draw_processes}}}"))
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    common = ["--storage", url, "--trials", "6", "--address", ray_local, "--concurrency", "1", "--sampler", "random"]
    first = subprocess.Popen(cli("run", str(space), "--out", str(tmp_path / "a"), "--seed", "1", *common),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if second_starts == "after_a_trial":
        wait_for(lambda: any(t.state.name == "COMPLETE" for t in trials_of(url)), what="the first driver's first trial")
    second = subprocess.Popen(cli("run", str(space), "--out", str(tmp_path / "b"), "--seed", "2", *common),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    errors = [process.communicate(timeout=300)[1] for process in (first, second)]
    assert first.returncode == second.returncode == 0, errors
    study = load_existing(url)
    counted = measured(study)
    assert len(counted) == 6  # together exactly the budget
    keys = [t.user_attrs["config_key"] for t in counted]
    assert len(set(keys)) == len(keys)  # no config trained twice
    assert not any(t.user_attrs.get("reason") == "interrupted" for t in study.trials)  # nobody's live trial failed
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


def _ray_trial_workers() -> list[int]:
    """Processes of Ray Tune's function trainables ('ray::ImplicitFunc.train')."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if b"ImplicitFunc" in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_a_killed_worker_is_recorded_and_its_config_run_again(ray_local, tmp_path, capsys):
    space = write_space(tmp_path, SLOW)
    out = tmp_path / "run"
    url = default_storage(out)
    killed = []

    def kill_a_training_worker() -> None:
        def training() -> bool:
            return any(t.state.name == "RUNNING" and t.user_attrs.get("claimed") for t in trials_of(url)) and bool(_ray_trial_workers())

        wait_for(training, what="a trial in training")
        time.sleep(1.0)
        for pid in _ray_trial_workers():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_a_training_worker, daemon=True)
    killer.start()
    assert main(["run", str(space), "--trials", "2", "--out", str(out), "--concurrency", "1", "--sampler", "random"]) == 0
    killer.join(timeout=5)
    assert killed
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err and "ActorDiedError" not in printed.out + printed.err
    study = load_existing(url)
    died = [t for t in study.trials if t.user_attrs.get("reason") == "worker_died"]
    assert len(died) == 1 and "worker process died" in died[0].user_attrs["message"]
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == died[0].number)
    assert retry.params == died[0].params and retry.state.name == "COMPLETE"
    assert len(measured(study)) == 2


@pytest.fixture
def finished_run(tmp_path):
    return synthetic_run(tmp_path, text=FAST)


@pytest.mark.parametrize("command", [["front"], ["trials"], ["export", "--knee"], ["plot"]])
def test_a_damaged_study_is_one_line_and_exit_2(finished_run, capsys, command):
    out, _ = finished_run
    study_file = out / "study.db"
    with open(study_file, "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(8192))
    assert main([command[0], str(out), *command[1:]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{study_file}: the study storage failed (the file is damaged" in err


def test_a_damaged_study_stops_a_search_with_one_line(finished_run, capsys):
    out, space = finished_run
    with open(out / "study.db", "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(8192))
    assert main(["run", space.path, "--out", str(out)]) == 2
    assert "the study storage failed (the file is damaged" in capsys.readouterr().err


def test_a_full_disk_and_a_read_only_folder_are_one_line(finished_run, capsys):
    out, _ = finished_run
    assert main(["trials", str(out), "--format", "csv", "-o", "/dev/full"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err
    out.chmod(0o555)
    try:
        if os.access(out, os.W_OK):
            pytest.skip("this user writes to read-only folders (root): the read-only case cannot be made here")
        assert main(["plot", str(out)]) == 2
        assert "Permission denied" in capsys.readouterr().err
    finally:
        out.chmod(0o755)


def test_output_into_a_closed_pipe_exits_quietly(finished_run):
    out, _ = finished_run
    result = subprocess.run(f"{sys.executable} -m configaformer_search.cli trials {out} --all | head -1",
                            shell=True, capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith(" ") or result.stdout.split()[0] == "state"
    assert result.stderr == ""


def test_a_huge_candidate_is_refused_without_building_it(tmp_path):
    space = write_space(tmp_path, FAST.replace("{choice: [32, 48]}", "{choice: [8192]}")
                        + "constraints: {params: {max: 1e6}}\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(cli("validate", str(space), "--samples", "2"), capture_output=True, text=True, timeout=300)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert result.returncode == 2, result.stdout + result.stderr  # no draw passes: the space is refused
    assert "constraint" in result.stderr and "params" in result.stderr
    assert peak_mb < 1500 or before / 1024 >= 1500  # the fp32 model alone would take 6 GB
