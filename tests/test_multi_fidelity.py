"""Multi-fidelity search: rungs measured on one warmup-stable-decay run mean what a run of that budget means, the
promotions at each rung follow asynchronous successive halving as published (non-dominated ranking, no quota), the
Pareto arithmetic they rest on agrees with brute force, and a search with scheduler asha leaves PRUNED trials below
the budget and COMPLETE ones at exactly it, resuming after a kill without training a config twice at one rung (real
Ray: marked slow)."""

import itertools
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import TINY_SPACE, write_space

from configaformer import ConfigaFormer
from configaformer_search.cli import main
from configaformer_search.data import embedded_corpus
from configaformer_search.driver.promotions import Promotions
from configaformer_search.driver.state import RungResult
from configaformer_search.pareto import Dominance, Ranking, dominates, hypervolume
from configaformer_search.review import build_review
from configaformer_search.run import search
from configaformer_search.space import load_space
from configaformer_search.storage import default_storage, read_study
from configaformer_search.train import learning_rate, train

ASHA = TINY_SPACE.replace("search: {trials: 4, sampler: random}",
                          "search: {trials: 8, sampler: random, scheduler: asha, min_tokens: 5120}") \
    .replace("tokens: 49152", "tokens: 46080")
TRAIN = {"tokens": 46080, "batch_size": 16, "seq_len": 32, "lr": 1e-2, "warmup": 0.1, "min_lr": 0.1, "weight_decay": 0.1,
         "grad_clip": 1.0, "seed": 3, "eval_tokens": 2048, "eval_seq_len": 32, "schedule": "wsd", "decay": 0.2}


@pytest.fixture
def one_thread():
    """Training on one CPU thread, as a trial does (trial._prepared): two threads beside other busy processes on two
    cores run many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0) -> ConfigaFormer:
    torch.manual_seed(seed)
    return ConfigaFormer.from_config({"dim_model": 32, "vocab_size": 256, "max_length": 32, "dim_rope": 8,
                                      "layers": [{"type": "Attention", "heads": 2}, {"type": "FFN", "ff_mult": 2}]},
                                     verbose=False)


def test_wsd_schedule_is_a_pure_function_shared_by_every_budget_until_its_decay():
    short, full = 30, 90
    for step in range(full):
        if step < short - 6:  # before the short budget's decay (its last 20%), both budgets train alike
            assert learning_rate(step, short, 3, TRAIN) == learning_rate(step, full, 3, TRAIN)
    assert learning_rate(0, full, 3, TRAIN) == pytest.approx(TRAIN["lr"] / 3)
    assert learning_rate(full - 1, full, 3, TRAIN) == pytest.approx(TRAIN["lr"] * TRAIN["min_lr"])
    cosine = dict(TRAIN, schedule="cosine")
    assert learning_rate(full - 1, full, 3, cosine) < learning_rate(full // 2, full, 3, cosine) < TRAIN["lr"]


def test_a_rung_measures_what_a_run_of_that_budget_alone_measures(one_thread):
    corpus = embedded_corpus()
    rungs = [5120, 15360, 46080]
    seen = []
    train(tiny_model(), corpus, TRAIN, torch.device("cpu"), rungs, report=lambda m: seen.append(m) or True)
    alone = train(tiny_model(), corpus, TRAIN, torch.device("cpu"), rungs[:2])
    assert [m.rung for m in seen] == [0, 1, 2] and [m.tokens_trained for m in seen] == rungs
    assert seen[1].val_loss == pytest.approx(alone.val_loss, abs=1e-6)
    assert seen[0].val_loss > seen[1].val_loss > seen[2].val_loss  # more tokens, lower loss


def test_training_resumed_from_a_rung_continues_as_if_never_stopped(one_thread):
    corpus = embedded_corpus()
    rungs = [5120, 15360, 46080]
    saved = []
    straight = train(tiny_model(), corpus, TRAIN, torch.device("cpu"), rungs, save=saved.append)
    assert [s.rung for s in saved] == [0, 1]
    told = []
    resumed = train(tiny_model(seed=9), corpus, TRAIN, torch.device("cpu"), rungs, report=lambda m: told.append(m) or True,
                    start=saved[0])
    assert told[0] is saved[0].measurement  # the resumed rung is told again first, without training it again
    assert [m.rung for m in told] == [0, 1, 2]
    assert resumed.val_loss == pytest.approx(straight.val_loss, abs=1e-6)
    stopped = train(tiny_model(), corpus, TRAIN, torch.device("cpu"), rungs, report=lambda m: m.rung < 1)
    assert stopped is None  # report answered stop at rung 1


# -- promotions (driver/promotions.py) ----------------------------------------------------------------------------

def test_a_rung_ranks_by_nondominated_sorting_with_infeasible_results_last():
    table = Promotions(["minimize", "minimize"], reduction_factor=2, last_rung=2)
    table.record(0, "a", [1.0, 5.0], 0.0)
    table.record(0, "b", [2.0, 2.0], 0.0)
    table.record(0, "c", [3.0, 6.0], 0.0)  # dominated by both
    table.record(0, "d", [0.5, 0.5], 0.3)  # dominates all, but infeasible
    table.record(0, "a", [9.0, 9.0], 0.0)  # a config recorded again (a resumed trial) counts once, as first told
    table.learn([RungResult(0, "b", [0.1, 0.1], 0.0)])  # and so does one read again from the study
    assert table.recorded(0) == 4 and table.results[0]["a"] == ([1.0, 5.0], 0.0)
    order = table.order(0)
    assert set(order[:2]) == {"a", "b"} and order[2:] == ["c", "d"]
    assert table.promotable(0, "a") and table.promotable(0, "b")  # the best 4 // 2
    assert not table.promotable(0, "c") and not table.promotable(0, "d")
    table.record(0, "e", [4.0, 4.0], 0.8)  # infeasible ones after every feasible one, by their violation alone
    assert table.order(0)[3:] == ["d", "e"]
    maximise = Promotions(["maximize"], reduction_factor=3, last_rung=2)
    for key, value in (("x", 1.0), ("y", 3.0), ("z", 2.0)):
        maximise.record(1, key, [value], 0.0)
    assert maximise.order(1) == ["y", "z", "x"] and maximise.decide(1, "y") and not maximise.decide(1, "z")
    assert not Promotions(["minimize"], 3, 2).decide(0, "alone")  # one result of one: it waits for two more
    assert not maximise.promotable(2, "y") and not maximise.decide(2, "y")  # nothing goes on from the last rung


def quota_promotable(table: Promotions, promoted: set, rung: int, key: str) -> bool:
    """The rule this replaced (the old RungTable): the same top floor(n / eta), but while fewer than that many have
    gone on from the rung."""
    places = table.places(rung)
    return key not in promoted and len(promoted) < places and key in table.order(rung)[:places]


def test_late_good_configs_are_not_starved():
    """Twelve results at a rung with eta 3; the best comes first, the second and third best only 10th and 11th.
    Each goes on as soon as it ranks in the top floor(n / 3) and has not gone on, however many went on before it
    (ASHA as published); the quota rule would have refused both, and never taken the third best."""
    arrivals = [("best", 0.10), ("m1", 0.50), ("m2", 0.60), ("m3", 0.70), ("m4", 0.80), ("m5", 0.90), ("m6", 0.95),
                ("m7", 0.97), ("m8", 0.99), ("second", 0.20), ("third", 0.30), ("m9", 1.00)]
    table = Promotions(["minimize"], reduction_factor=3, last_rung=2)
    waiting: dict[str, int] = {}
    went_on, quota_went_on, refused_by_quota = [], set(), {}
    for n, (key, value) in enumerate(arrivals, start=1):
        table.record(0, key, [value], 0.0)
        waiting[key] = 0
        refused_by_quota[key] = not quota_promotable(table, quota_went_on, 0, key)
        for candidate in table.order(0):  # the old rule, driven alike
            if quota_promotable(table, quota_went_on, 0, candidate):
                quota_went_on.add(candidate)
        now = []
        while (chosen := table.next(waiting)) is not None:  # what the driver does with a free slot
            now.append(chosen)
            del waiting[chosen]
        went_on.append((n, now))
    assert dict(went_on)[3] == ["best"] and dict(went_on)[6] == ["m1"] and dict(went_on)[9] == ["m2"]
    assert dict(went_on)[10] == ["second"] and dict(went_on)[11] == ["third"]  # at once, with 3 of 3 places used
    assert refused_by_quota["second"] and refused_by_quota["third"]
    assert "third" not in quota_went_on  # starved for good under the quota
    assert {key for _, now in went_on for key in now} == {"best", "m1", "m2", "second", "third"}
    assert all(table.decide(0, key) for key in ("best", "m1", "m2", "second", "third"))
    assert table.next(waiting) is None and table.places(0) == 4  # five went on from twelve: no quota


def test_a_draining_search_takes_the_rounded_up_share():
    table = Promotions(["minimize"], reduction_factor=3, last_rung=1)
    for key, value in (("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)):
        table.record(0, key, [value], 0.0)
    waiting = {"b": 0, "c": 0, "d": 0}
    assert table.places(0) == 1 and table.places(0, draining=True) == 2  # floor(4/3), ceil(4/3)
    assert table.next(waiting) is None  # a is in the one place (and is not waiting)
    assert not table.promotable(0, "b") and table.promotable(0, "b", draining=True)
    assert table.next(waiting, draining=True) == "b"
    assert table.next({"c": 0, "d": 0}, draining=True) is None


def test_deciding_again_for_a_config_that_went_on_says_it_goes_on():
    table = Promotions(["minimize"], reduction_factor=2, last_rung=2)
    for key, value in (("a", 1.0), ("b", 2.0)):
        table.record(0, key, [value], 0.0)
    assert table.decide(0, "a") and not table.promotable(0, "a")  # promoted once
    for key, value in (("c", 0.1), ("d", 0.2), ("e", 0.3), ("f", 0.4)):
        table.record(0, key, [value], 0.0)  # a falls out of the top 3 of 6
    assert table.decide(0, "a") and table.decide(0, "a")  # a resumed trial reporting the rung again goes on again
    assert table.promoted == {(0, "a")}  # and nothing else changed
    assert not table.decide(0, "b")


def test_the_highest_rung_promotes_first():
    table = Promotions(["minimize"], reduction_factor=2, last_rung=3)
    for rung in (0, 1):
        for key, value in (("a", 1.0), ("b", 2.0)):
            table.record(rung, f"{key}{rung}", [value], 0.0)
    assert table.next({"a0": 0, "a1": 1, "b1": 1}) == "a1"
    assert table.next({"a0": 0, "b1": 1}) == "a0"  # b1 is not among rung 1's best: the lower rung's best goes


# -- Pareto arithmetic (pareto.py) against brute force ------------------------------------------------------------

def hypervolume_by_inclusion_exclusion(points: np.ndarray, reference: np.ndarray) -> float:
    """The union of the boxes [p, reference] by inclusion-exclusion over every subset of the points (exact)."""
    total = 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(range(len(points)), size):
            corner = points[list(subset)].max(axis=0)
            total += (-1) ** (size + 1) * np.prod(np.clip(reference - corner, 0, None))
    return total


@pytest.mark.parametrize("objectives", [1, 2, 3, 4])
def test_hypervolume_matches_inclusion_exclusion(objectives):
    generator = np.random.default_rng(objectives)
    for trial in range(40):
        count = int(generator.integers(1, 9))
        points = generator.integers(0, 6, size=(count, objectives)).astype(float)  # ties and duplicates happen
        if trial % 2:
            points = generator.random((count, objectives)) * 5
        reference = np.full(objectives, 4.5)  # some points lie outside it in some objective
        expected = hypervolume_by_inclusion_exclusion(points, reference)
        assert hypervolume(points, reference) == pytest.approx(expected, abs=1e-9), (points, reference)
    assert hypervolume(np.zeros((0, objectives)), np.ones(objectives)) == 0.0


def test_hypervolume_of_a_known_staircase():
    points = np.array([[1.0, 9.0], [2.0, 4.0], [3.0, 3.0], [4.0, 1.0], [5.0, 5.0]])
    assert hypervolume(points, np.array([6.0, 10.0])) == pytest.approx(5 * 1 + 4 * 5 + 3 * 1 + 2 * 2)
    assert hypervolume(np.array([[1.0, 1.0, 1.0]]), np.array([2.0, 3.0, 4.0])) == pytest.approx(1 * 2 * 3)


def test_promotion_picks_the_first_waiting_config_of_the_rungs_order():
    """Which waiting config goes on is read off the fronts and one front's epsilon-net, not the whole order: it is
    the one the full order of its rung puts first, highest rung first, in a long random run with constraints."""
    generator = np.random.default_rng(7)
    table = Promotions(["minimize", "maximize", "minimize"], reduction_factor=3, last_rung=2)
    waiting: dict[str, int] = {}
    for n in range(300):
        rung = int(generator.integers(0, 2))
        key = f"c{n}"
        table.record(rung, key, generator.integers(0, 6, size=3).astype(float).tolist(),
                     float(generator.random() < 0.2) * float(generator.integers(1, 3)))
        waiting[key] = rung
        draining = bool(generator.random() < 0.1)
        expected = next((k for r in sorted(set(waiting.values()), reverse=True)
                         for k in table.order(r, table.places(r, draining)) if waiting.get(k) == r), None)
        assert table.next(waiting, draining) == expected
        waiting.pop(expected, None)


def rank_by_definition(points: np.ndarray, penalty=None) -> list[int]:
    """A point's front: 0 when no point dominates it, else one more than the front of its worst-ranked dominator
    (the longest chain of dominators above it); infeasible points after every feasible front, by violation alone."""
    count = len(points)
    feasible = [True] * count if penalty is None else [p <= 0 for p in penalty]
    memo: dict[int, int] = {}

    def rank(i: int) -> int:
        if i not in memo:
            above = [j for j in range(count) if feasible[j] and j != i
                     and all(points[j] <= points[i]) and any(points[j] < points[i])]
            memo[i] = 1 + max(rank(j) for j in above) if above else 0
        return memo[i]

    ranks = [rank(i) if feasible[i] else None for i in range(count)]
    fronts = max((r for r in ranks if r is not None), default=-1) + 1
    violations = sorted({penalty[i] for i in range(count) if not feasible[i]}) if penalty is not None else []
    return [r if r is not None else fronts + violations.index(penalty[i]) for i, r in enumerate(ranks)]


@pytest.mark.parametrize("objectives", [1, 2, 3])
def test_nondominated_rank_matches_its_definition(objectives):
    generator = np.random.default_rng(10 + objectives)
    for trial in range(50):
        count = int(generator.integers(1, 12))
        points = generator.integers(0, 4, size=(count, objectives)).astype(float)
        assert Ranking(points).ranks.tolist() == rank_by_definition(points), points
        penalty = np.where(generator.random(count) < 0.3, generator.integers(1, 4, count) / 2, 0.0)
        assert Ranking(points, penalty).ranks.tolist() == rank_by_definition(points, penalty), (points, penalty)
        order = Ranking(points, penalty).order()
        assert sorted(order) == list(range(count))
        assert all(Ranking(points, penalty, limit=k).order() == order[:k] for k in range(count + 1))  # the best k alone
        table = Dominance(objectives)  # the same, kept as the points come (one, then the rest at once)
        table.add(points[:1], penalty[:1])
        table.add(points[1:], penalty[1:])
        assert table.ranking().order() == order and table.ranking(count // 2).order() == order[:count // 2]
        for limit in (count, count // 2):  # who is among the best k, and who of some comes first, without the order
            ranking = table.ranking(limit)
            for k in range(limit + 1):
                assert set(np.flatnonzero(ranking.among_best(range(count), k)).tolist()) == set(order[:k])
                some = [i for i in order[:k] if generator.random() < 0.5]
                assert ranking.first(some[::-1]) == (some[0] if some else None)
        assert [rank_by_definition(points, penalty)[i] for i in order] == sorted(rank_by_definition(points, penalty))
    assert dominates(np.array([1.0, 2.0]), np.array([1.0, 3.0])) and not dominates(np.array([1.0, 2.0]), np.array([1.0, 2.0]))


def test_space_declares_rungs_and_refuses_what_cannot_measure_them(tmp_path, capsys):
    space = load_space(write_space(tmp_path, ASHA))
    assert space.rungs() == [5120, 15360, 46080] and space.train["schedule"] == "wsd"
    assert load_space(write_space(tmp_path, TINY_SPACE)).rungs() == [49152]
    default = ASHA.replace(", min_tokens: 5120", "").replace("tokens: 46080", "tokens: 196608")
    assert load_space(write_space(tmp_path, default)).rungs() == [21845, 65535, 196608]
    for text, why in ((ASHA.replace("eval_tokens: 4096", "eval_tokens: 4096, schedule: cosine"), "train.schedule: search.scheduler asha"),
                      (ASHA.replace("min_tokens: 5120", "min_tokens: 46080"), "search.min_tokens: expected a positive count under"),
                      (TINY_SPACE.replace("sampler: random", "sampler: random, min_tokens: 100"), "search.min_tokens: only a multi-fidelity"),
                      (ASHA.replace("scheduler: asha", "scheduler: hyperband"), "search.scheduler")):
        assert main(["validate", str(write_space(tmp_path, text, "bad.yaml"))]) == 2
        err = capsys.readouterr().err
        assert why in err and err.count("\n") == 1, err


# -- real searches on Ray ------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_asha_search_prunes_below_the_budget_and_completes_only_at_it(ray_local, tmp_path, capsys):
    result = search(write_space(tmp_path, ASHA), out=tmp_path / "run", address=ray_local, verbosity=1)
    printed = capsys.readouterr().out
    study, full = read_study(result.url), 46080
    measured = [t for t in study.trials if t.finished and t.outcome.counts]
    assert len(measured) == 8  # --trials counts configs measured
    pruned = [t for t in measured if t.state == "PRUNED"]
    complete = [t for t in measured if t.state == "COMPLETE"]
    assert pruned and complete
    assert all(t.user_attrs["tokens_trained"] < full and t.user_attrs["status"] == "stopped" for t in pruned)
    assert all(t.user_attrs["tokens_trained"] == full and t.user_attrs["rung"] == 2 for t in complete)
    for trial in measured:  # every rung it passed is kept, with the objectives it was ranked by
        rungs = trial.user_attrs["rungs"]
        assert sorted(map(int, rungs)) == list(range(trial.user_attrs["rung"] + 1))
        assert rungs[str(trial.user_attrs["rung"])]["values"][0] == pytest.approx(trial.user_attrs["val_loss"])
    review = build_review(study)
    assert review.front and {t.number for t in review.front} <= {t.number for t in complete}
    assert "rung 0 at 5,120 tokens" in printed and "-> waits" in printed and "-> goes on" in printed
    assert not (tmp_path / "run" / "checkpoints").exists()  # every trial ended: no state kept
    rungs = review.rungs  # the review counts what reached and stopped at each rung
    assert [r.rung for r in rungs] == [0, 1, 2] and rungs[0].reached == 8 and rungs[2].reached == len(complete)
    assert sum(r.stopped for r in rungs) == len(pruned) and rungs[2].stopped == 0
    assert 'id="rungs"' in (tmp_path / "run" / "report.html").read_text()


@pytest.mark.slow
def test_killed_asha_search_resumes_a_config_after_its_last_rung(ray_local, tmp_path):
    space = write_space(tmp_path, ASHA.replace("tokens: 46080", "tokens: 737280").replace("min_tokens: 5120", "min_tokens: 81920")
                        .replace("trials: 8", "trials: 3"))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "configaformer_search.cli", "run", str(space), "--out", "run",  # relative: as given
               "--concurrency", "1", "--address", ray_local]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               start_new_session=True, cwd=tmp_path)
    try:
        for line in process.stdout:  # kill the first trial that goes on from rung 0 while it trains rung 1
            if "-> goes on" in line:
                went_on = int(re.search(r"#(\d+)", line)[1])
                time.sleep(0.5)
                break
        else:
            pytest.fail("no trial went on from a rung")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    killed = {t.number: t for t in read_study(default_storage(out)).trials if t.user_attrs.get("rungs")}
    assert went_on in killed and (out / "checkpoints").is_dir()
    assert main(["run", str(space), "--out", str(out), "--concurrency", "1", "-q"]) == 0
    study = read_study(default_storage(out))
    first = killed[went_on]
    resumed = [t for t in study.trials if t.user_attrs.get("resumes") == first.number]
    assert len(resumed) == 1 and resumed[0].user_attrs["config_key"] == first.user_attrs["config_key"]
    assert resumed[0].user_attrs["resumed_at_rung"] == max(map(int, first.user_attrs["rungs"]))  # no rung trained twice
    assert resumed[0].user_attrs["rungs"]["0"] == first.user_attrs["rungs"]["0"]  # its rung results kept
    assert study.trial(first.number).state == "FAIL" and study.trial(first.number).outcome.kind.name == "interrupted"
    assert not (out / "checkpoints").exists()
