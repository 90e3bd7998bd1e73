"""The search driver without Ray: synthetic trials (driver/synthetic.py) over real SQLite studies, real claims, real
promotions. Several drivers on one study, resumes, dead drivers, exhausted spaces, and the budget they keep."""

import threading
import time

import pytest
from helpers import write_space

from configaformer_search.driver.samplers import make_sampler
from configaformer_search.driver.searcher import DONE, Driver
from configaformer_search.driver.synthetic import SyntheticCluster, synthetic_record
from configaformer_search.progress import Progress
from configaformer_search.space import load_space
from configaformer_search.storage import StudyStore, open_storage, read_study

SPACE = """
name: synth
data: {source: embedded}
params:
  width: {choice: [32, 48, 64]}
  depth: {int: [1, 3]}
  heads: {choice: [2, 4]}
model:
  dim_model: $width
  position: alibi
  layers:
    repeat: $depth
    each:
      - {type: Attention, heads: $heads}
      - {type: FFN, ff_mult: 2}
train: {tokens: 46080, batch_size: 16, seq_len: 32, eval_tokens: 1024}
objectives: {val_loss: min, peak_mem_mb: min}
search: {trials: 8, sampler: random, scheduler: asha, min_tokens: 5120}
"""
FIFO = SPACE.replace(", scheduler: asha, min_tokens: 5120", "")


def driver(tmp_path, text=SPACE, trials=8, seed=0, url=None):
    space = load_space(write_space(tmp_path, text, f"space{seed}.yaml"))
    url = url or f"sqlite:///{tmp_path / 'study.db'}"
    store = StudyStore.open(open_storage(url), space.name, space.objectives, make_sampler(space, "random", seed, trials),
                            space.distributions())
    return Driver(space, store, 256, trials, Progress(trials, 0, list(space.objectives), verbosity=0))


def finished(url):
    study = read_study(url)
    return study, [t for t in study.trials if t.finished and t.outcome.counts]


def test_one_driver_measures_exactly_the_budget_and_holds_a_place_for_each(tmp_path):
    d = driver(tmp_path, FIFO, trials=6)
    SyntheticCluster(d, slots=2).run()
    study, counted = finished(f"sqlite:///{tmp_path / 'study.db'}")
    assert len(counted) == 6 and len({t.user_attrs["config_key"] for t in counted}) == 6
    assert all(t.state == "COMPLETE" for t in counted) and not study.in_state("RUNNING")
    assert len(d.state.places) == 6 and {p.trial for p in d.state.places.values()} == {t.number for t in counted}


def test_asha_completes_at_the_full_budget_and_stops_the_rest_at_rungs(tmp_path):
    d = driver(tmp_path, trials=9)
    SyntheticCluster(d, slots=2).run()
    study, counted = finished(f"sqlite:///{tmp_path / 'study.db'}")
    assert len(counted) == 9 and not study.in_state("RUNNING")
    complete = [t for t in counted if t.state == "COMPLETE"]
    stopped = [t for t in counted if t.state == "PRUNED"]
    assert complete and stopped and all(t.user_attrs["rung"] == 2 for t in complete)
    assert all(t.user_attrs["rung"] < 2 and t.user_attrs["status"] == "stopped" for t in stopped)
    for trial in counted:  # every rung it passed is recorded with it, and it went on from each rung below its last
        assert sorted(map(int, trial.user_attrs["rungs"])) == list(range(trial.user_attrs["rung"] + 1))
        assert trial.user_attrs.get("promoted", []) == list(range(trial.user_attrs["rung"]))


def run_together(drivers, during=None):
    """Each driver's synthetic search in a thread of its own, `during` (if given) run meanwhile."""
    errors = []

    def run(d):
        try:
            SyntheticCluster(d, slots=2).run()
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(d,)) for d in drivers]
    for thread in threads:
        thread.start()
    if during is not None:
        during()
    for thread in threads:
        thread.join(timeout=180)
    assert not errors and not any(t.is_alive() for t in threads), errors


@pytest.mark.parametrize("scheduler", ["fifo", "asha"])
def test_two_drivers_on_one_study_end_with_exactly_the_budget(tmp_path, scheduler, study_url):
    text = SPACE if scheduler == "asha" else FIFO
    drivers = [driver(tmp_path, text, trials=10, seed=seed, url=study_url) for seed in (1, 2)]
    run_together(drivers)
    study, counted = finished(study_url)
    assert len(counted) == 10  # together exactly the budget
    keys = [t.user_attrs["config_key"] for t in counted]
    assert len(set(keys)) == len(keys)  # no config trained twice
    assert not study.in_state("RUNNING")
    assert not [t for t in study.trials if t.outcome.kind.name == "interrupted"]  # nobody's live trial failed
    if scheduler == "asha":
        assert any(t.state == "COMPLETE" for t in counted)


def test_a_resumed_driver_keeps_the_rung_table_and_what_went_on(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = driver(tmp_path, trials=9)
    cluster = SyntheticCluster(first, slots=2)
    while not first.paused or not first.promotions.promoted:  # some wait at a rung, some went on
        cluster.step()
    went_on = set(first.promotions.promoted)
    results = {rung: dict(entries) for rung, entries in first.promotions.results.items()}
    first.store.fail_running()  # what a search resuming in its own folder does with a killed one's trials
    second = driver(tmp_path, trials=9, seed=5)
    assert second.promotions.results == results  # read back from the study
    SyntheticCluster(second, slots=2).run()
    study, counted = finished(url)
    assert len(counted) == 9 and not study.in_state("RUNNING")
    for rung, key in went_on:  # a config that went on before the kill goes on again, without being ranked anew
        trials = [t for t in counted if t.user_attrs["config_key"] == key]
        assert trials and trials[0].user_attrs["rung"] > rung
    queued = [t for t in study.trials if "resumes" in t.user_attrs]
    assert queued and all(t.user_attrs["rungs"] for t in queued)
    measured_at = {}
    for trial in counted:  # no config measured twice at one rung: each rung result recorded once
        for rung in trial.user_attrs["rungs"]:
            measured_at.setdefault((rung, trial.user_attrs["config_key"]), 0)
            measured_at[(rung, trial.user_attrs["config_key"])] += 1
    assert max(measured_at.values()) == 1


@pytest.mark.slow
def test_an_exhausted_space_under_asha_still_trains_its_best_to_the_full_budget(tmp_path):
    tiny = SPACE.replace("{choice: [32, 48, 64]}", "{choice: [32, 48]}").replace("{int: [1, 3]}", "{int: [1, 2]}") \
        .replace("{choice: [2, 4]}", "{choice: [2]}")  # 4 configs in all
    d = driver(tmp_path, tiny, trials=8)
    SyntheticCluster(d, slots=2).run()
    study, counted = finished(f"sqlite:///{tmp_path / 'study.db'}")
    assert d.stop_reason == "exhausted" and len(counted) == 4
    assert any(t.state == "COMPLETE" and t.user_attrs["rung"] == 2 for t in counted)  # the drain went to the end
    assert not study.in_state("RUNNING")


def test_a_dead_drivers_trials_are_failed_by_heartbeat_and_owed_again(tmp_path, study_url):
    url = study_url
    dead = driver(tmp_path, FIFO, trials=6, url=url)
    cluster = SyntheticCluster(dead, slots=2)
    cluster.step()  # two trials handed out, then the driver "dies": no more heartbeats, nothing recorded
    held = {p.trial for p in dead.state.places.values()}
    assert len(held) == 2
    alive = driver(tmp_path, FIFO, trials=6, seed=3, url=url)
    alive.store.grace_s = 0  # as --heartbeat-grace sets it (whose least is longer than a test should wait)
    time.sleep(1.1)  # older than the grace period, by the database's clock (whole seconds on SQLite)
    SyntheticCluster(alive, slots=2).run()
    study, counted = finished(url)
    assert len(counted) == 6 and not study.in_state("RUNNING")
    stale = [t for t in study.trials if t.number in held]
    assert all(t.state == "FAIL" and t.outcome.kind.name == "interrupted" for t in stale)
    assert not held & {p.trial for p in alive.state.places.values()}  # their places were freed and taken again


def test_a_drawn_trial_has_a_heartbeat_before_its_params(tmp_path):
    from configaformer_search.driver.suggestions import draw

    d = driver(tmp_path)
    suggestion = draw(d.store, d.space, 256)
    rows = d.store._query("SELECT trial_id FROM trial_heartbeats", {})
    assert (suggestion.trial_id,) in [tuple(r) for r in rows] and suggestion.params


def test_a_worker_that_dies_is_retried_once_then_fails_for_good(tmp_path):
    deaths = {}

    def record(d, params, key, rung):
        deaths[key] = deaths.get(key, 0) + 1
        return None if deaths[key] <= 2 and len(deaths) == 1 else synthetic_record(d, params, key, rung)

    d = driver(tmp_path, FIFO, trials=3)
    SyntheticCluster(d, slots=1, record=record).run()
    study, counted = finished(f"sqlite:///{tmp_path / 'study.db'}")
    kinds = [t.outcome.kind.name for t in study.trials if t.finished]
    assert kinds.count("worker_died") == 1 and kinds.count("worker_died_twice") == 1
    retry = next(t for t in study.trials if "retry_of" in t.user_attrs)
    assert retry.params == study.trial(retry.user_attrs["retry_of"]).params
    assert len(counted) == 3  # the second death counts: it trained, and is not tried a third time


def test_a_token_budget_stops_new_configs(tmp_path):
    d = driver(tmp_path, FIFO, trials=20)
    d.tokens = 46080 * 3  # three full trainings
    SyntheticCluster(d, slots=1).run()
    _, counted = finished(f"sqlite:///{tmp_path / 'study.db'}")
    assert len(counted) == 3 and d.next("later") == DONE


@pytest.mark.slow
def test_drivers_ride_out_a_database_server_that_goes_away(tmp_path, postgres_server, postgres_url):
    from configaformer_search.storage.patience import Patience

    said = []
    drivers = [driver(tmp_path, SPACE, trials=10, seed=seed, url=postgres_url) for seed in (1, 2)]
    for d in drivers:
        d.store.patience = Patience(120, said.append, d.store.url)
    run_together(drivers, during=lambda: (time.sleep(1.0), postgres_server.outage(6).result()))
    study, counted = finished(postgres_url)
    assert len(counted) == 10 and not study.in_state("RUNNING")  # nothing lost, nothing left running
    keys = [t.user_attrs["config_key"] for t in counted]
    assert len(set(keys)) == len(keys)  # nothing trained twice
    assert not [t for t in study.trials if t.outcome.kind.name == "interrupted"]  # no live trial taken for dead
    down = [line for line in said if "unreachable" in line]
    assert 1 <= len(down) <= 2 and all("secret" not in line for line in said)  # said once by each driver at most
    assert any("is back after" in line for line in said)


@pytest.mark.slow
def test_a_driver_stops_with_one_line_once_its_patience_runs_out(tmp_path, postgres_server, postgres_url):
    from configaformer_search.storage.faults import storage_fault
    from configaformer_search.storage.patience import Patience

    d = driver(tmp_path, FIFO, trials=4, url=postgres_url)
    d.store.patience = Patience(2, lambda text: None, d.store.url)
    postgres_server.stop()
    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        d.refresh(force=True)
    assert 2 <= time.monotonic() - started < 30
    fault = storage_fault(postgres_url, caught.value)
    assert fault is not None and "the study storage failed" in str(fault) and str(fault).count("\n") == 0


TIMED = FIFO.replace("width: {choice: [32, 48, 64]}", "width: {choice: [32, 48, 64, 96]}") \
    .replace("depth: {int: [1, 3]}", "depth: {int: [1, 8]}") \
    .replace("objectives: {val_loss: min, peak_mem_mb: min}",
             "objectives: {val_loss: min, decode_ms: min}\nconstraints: {decode_ms: {max: 2.0}}")


def timed_record(driver, params, key, rung):
    """A synthetic record with the config's real cheap metrics and a decode time that grows with width and depth."""
    from configaformer_search.candidate import screen

    cheap = screen(driver.space, params, 256, quick=True).metrics
    return {**synthetic_record(driver, params, key, rung), **cheap, "decode_ms": params["width"] * params["depth"] / 100}


def test_configs_predicted_far_over_a_timing_bound_are_refused_before_training(tmp_path):
    from configaformer_search.timing_screen import MIN_MEASURED

    d = driver(tmp_path, TIMED, trials=16, seed=3)
    SyntheticCluster(d, slots=2, record=timed_record).run()
    study = read_study(f"sqlite:///{tmp_path / 'study.db'}")
    trained = [t for t in study.trials if t.finished and t.outcome.counts]
    screened = [t for t in study.trials if t.user_attrs.get("reason") == "screened"]
    assert len(trained) == 16 and len(screened) >= 3  # the budget measured; the refusals took no place of it
    for t in screened:  # each over the bound in truth (no config that meets it is refused), and said so
        assert t.params["width"] * t.params["depth"] / 100 > 2.0, t.params
        assert t.user_attrs["message"].startswith("decode_ms predicted") and "> max 2" in t.user_attrs["message"]
    first_screened = min(t.number for t in screened)
    assert sum(t.number < first_screened for t in trained) >= MIN_MEASURED  # nothing refused before enough timings
    summary = d.screen_summary()["timing_screen"]
    assert summary["refused"] == len({t.user_attrs["config_key"] for t in screened}) and summary["measured"] == 16
    assert summary["accuracy"]["decode_ms"]["configs"] == 16 and summary["accuracy"]["decode_ms"]["within_10pct"] > 0.5
