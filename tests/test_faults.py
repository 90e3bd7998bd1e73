"""The faults a shared cluster brings: a worker killed mid-trial, a damaged or full storage, a closed pipe, a candidate
far too large. Real Ray, real SQLite; the study stays the truth. (Several drivers on one study under successive
halving: test_driver.py, and through the CLI with a driver killed, test_postgres_search.py.)"""

import os
import resource
import signal
import subprocess
import sys
import time

import pytest
from helpers import TINY_SPACE, synthetic_run, write_space
from searches import cli, in_training, measured, ray_trial_workers, wait_for

from configaformer_search.cli import main
from configaformer_search.storage import default_storage, read_study

FAST = TINY_SPACE.replace("tokens: 49152", "tokens: 8192").replace("eval_tokens: 4096", "eval_tokens: 1024")
SLOW = TINY_SPACE.replace("tokens: 49152", "tokens: 196608")  # a few seconds a trial: long enough to be hit


@pytest.mark.slow
def test_a_killed_worker_is_recorded_run_again_and_shows_no_traceback(ray_local, tmp_path):
    space = write_space(tmp_path, SLOW)
    out = tmp_path / "run"
    url = default_storage(out)
    search = subprocess.Popen(cli("run", str(space), "--trials", "2", "--out", str(out), "--concurrency", "1",
                                  "--sampler", "random", "--address", ray_local),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: bool(in_training(url)) and bool(ray_trial_workers()), what="a trial in training")
    time.sleep(1.0)
    killed = ray_trial_workers()
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    printed, err = search.communicate(timeout=300)
    assert search.returncode == 0 and killed, err[-2000:]
    for text in (printed, err):  # Ray's own account of the lost worker went to the run folder, not the console
        assert "Traceback" not in text and "ActorDiedError" not in text and "Trials did not complete" not in text
    assert (out / "ray.log").stat().st_size > 0
    study = read_study(url)
    died = [t for t in study.trials if t.finished and t.outcome.kind.name == "worker_died"]
    assert len(died) == 1 and "worker process died" in died[0].user_attrs["message"]
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == died[0].number)
    assert retry.params == died[0].params and retry.state == "COMPLETE"
    assert len(measured(study)) == 2


@pytest.fixture
def finished_run(tmp_path):
    return synthetic_run(tmp_path, trials=8, text=FAST)


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


@pytest.mark.slow
def test_a_huge_candidate_is_refused_without_building_it(tmp_path):
    space = write_space(tmp_path, FAST.replace("{choice: [32, 48]}", "{choice: [8192]}")
                        + "constraints: {params: {max: 1e6}}\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(cli("validate", str(space), "--samples", "2"), capture_output=True, text=True, timeout=300)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert result.returncode == 2, result.stdout + result.stderr  # no draw passes: the space is refused
    assert "constraint" in result.stderr and "params" in result.stderr
    assert peak_mb < 1500 or before / 1024 >= 1500  # the fp32 model alone would take 6 GB
