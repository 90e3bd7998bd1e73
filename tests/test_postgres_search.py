"""Shared studies on a real PostgreSQL server, run as users run them: `configaformer-search` processes on the
session's Ray, one of them killed, the server taken away for a while; and a password that never shows."""

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import TINY_SPACE, write_space

from configaformer_search.storage import HEARTBEAT_S, read_study

SPACE = TINY_SPACE.replace("{choice: [2, 4]}", "{choice: [2, 4, 8]}").replace("{choice: [32, 48]}", "{choice: [16, 32, 48]}") \
    .replace("tokens: 49152", "tokens: 46080").replace("eval_tokens: 4096", "eval_tokens: 1024") \
    .replace("search: {trials: 4, sampler: random}", "search: {trials: 6, sampler: random, scheduler: asha, min_tokens: 5120}")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "configaformer_search.cli", *args]


def counted(url: str) -> list:
    return [t for t in read_study(url).trials if t.finished and t.outcome.counts]


def wait_for(condition, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # the study is being created, or the server is away
            pass
        time.sleep(0.3)
    pytest.fail("timed out")


@pytest.mark.slow
def test_drivers_on_postgresql_survive_a_killed_driver_and_an_outage(ray_local, tmp_path, postgres_server, postgres_url):
    space = write_space(tmp_path, SPACE)
    common = ["--storage", postgres_url, "--address", ray_local, "--concurrency", "1", "--storage-patience", "120",
              "--heartbeat-grace", "10"]  # the dead driver's trials owed again after 10 s of silence, not 30
    first = subprocess.Popen(cli("run", str(space), "--out", str(tmp_path / "a"), "--seed", "1", *common),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    second = subprocess.Popen(cli("run", str(space), "--out", str(tmp_path / "b"), "--seed", "2", *common),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(counted(postgres_url)) >= 1 or any(t.state == "RUNNING" for t in read_study(postgres_url).trials))
    time.sleep(HEARTBEAT_S + 3)  # its trials have beaten: taken for dead GRACE_S after, not after a start's grace
    os.killpg(first.pid, signal.SIGKILL)  # one driver dies with its trials
    first.wait(timeout=60)
    postgres_server.outage(8).result()  # the server goes away mid-search and comes back
    err = second.communicate(timeout=600)[1]
    assert second.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "unreachable" in err and "is back after" in err
    study = read_study(postgres_url)
    measured = [t for t in study.trials if t.finished and t.outcome.counts]
    assert len(measured) == 6  # exactly the budget, the dead driver's share owed again and measured
    keys = [t.user_attrs["config_key"] for t in measured]
    assert len(set(keys)) == len(keys)  # no config trained twice
    assert not study.in_state("RUNNING")
    assert any(t.state == "COMPLETE" for t in measured)


@pytest.mark.slow
def test_a_password_in_the_storage_url_is_never_printed_logged_or_written(ray_local, tmp_path, postgres_server):
    password = "s3cr3t-p@ss:w/rd"
    postgres_server.create_role("alice", password)
    database = postgres_server.create_database("secret", owner="alice")
    url = postgres_server.url(database, "alice", password)
    space = write_space(tmp_path, TINY_SPACE.replace("tokens: 49152", "tokens: 8192").replace("trials: 4", "trials: 2"))
    out = tmp_path / "run"
    done = subprocess.run(cli("run", str(space), "--out", str(out), "--storage", url, "--address", ray_local),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    wrong = postgres_server.url(database, "alice", "wrong-" + password)
    refused = subprocess.run(cli("front", str(out), "--storage", wrong), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "password authentication failed" in refused.stderr
    reviewed = [subprocess.run(cli(command, str(out), "--storage", url), capture_output=True, text=True, timeout=300)
                for command in ("front", "trials", "report")]
    assert all(r.returncode == 0 for r in reviewed)
    seen = [done.stdout, done.stderr, refused.stdout, refused.stderr, *(r.stdout + r.stderr for r in reviewed)]
    for path in out.rglob("*"):
        if path.is_file():
            seen.append(path.read_bytes().decode("utf-8", "replace"))
    for secret in (password, "s3cr3t", "p%40ss"):
        assert not any(secret in text for text in seen), secret
    assert "alice:***@" in done.stdout  # the run says which study, without the password


@pytest.mark.slow
def test_the_cluster_recipe_runs_as_written(tmp_path, postgres_server):
    """docs/clusters.md's recipe, pasted into bash as a user would, against the throwaway server and a Ray of its own."""
    import re
    import shutil
    import socket
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    page = (root / "docs" / "clusters.md").read_text()
    recipe = re.search(r"# recipe: begin\n(.*?)# recipe: end", page, re.S).group(1)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        ray_port = free.getsockname()[1]
    space = write_space(tmp_path, TINY_SPACE.replace("tokens: 49152", "tokens: 8192").replace("trials: 4", "trials: 3"))
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    home = tmp_path / "home"  # a fresh machine's: no Ray token yet
    home.mkdir()
    env = {**os.environ, "PGHOST": postgres_server.host, "PGPORT": str(postgres_server.port), "PGUSER": "postgres",
           "SPACE": str(space), "RAY_PORT": str(ray_port), "RUNS": str(tmp_path / "runs"), "DB": "recipe",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "RAY_TMPDIR": ray_tmp, "HOME": str(home)}
    recipe_run = subprocess.Popen(["bash", "-c", recipe], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True)
    try:
        stdout, stderr = recipe_run.communicate(timeout=300)
    finally:  # a recipe that hangs takes its Ray head and drivers with it
        if recipe_run.poll() is None:
            os.killpg(recipe_run.pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert recipe_run.returncode == 0, (stdout + stderr)[-3000:] + "".join(
        p.read_text()[-1500:] for p in (tmp_path / "runs").glob("*.log"))
    measured = counted(postgres_server.url("recipe"))
    assert len(measured) == 3 and "val_loss" in stdout  # the two drivers measured the budget together; the front
