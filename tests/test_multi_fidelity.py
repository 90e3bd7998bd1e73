"""Multi-fidelity search: rungs measured on one warmup-stable-decay run mean what a run of that budget means, the rung
tables rank by non-dominated sorting, and a search with scheduler asha leaves PRUNED trials below the budget and
COMPLETE ones at exactly it, resuming after a kill without training a config twice at one rung. Real training,
real Ray, real SQLite."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch
from helpers import TINY_SPACE, write_space

from configaformer import ConfigaFormer
from configaformer_search.cli import main
from configaformer_search.data import embedded_corpus
from configaformer_search.review import build_review
from configaformer_search.run import search
from configaformer_search.rungs import RungTable
from configaformer_search.space import load_space
from configaformer_search.study import default_storage, load_existing
from configaformer_search.train import learning_rate, train

ASHA = TINY_SPACE.replace("search: {trials: 4, sampler: random}",
                          "search: {trials: 8, sampler: random, scheduler: asha, min_tokens: 5120}") \
    .replace("tokens: 49152", "tokens: 46080")
TRAIN = {"tokens": 46080, "batch_size": 16, "seq_len": 32, "lr": 1e-2, "warmup": 0.1, "min_lr": 0.1, "weight_decay": 0.1,
         "grad_clip": 1.0, "seed": 3, "eval_tokens": 2048, "eval_seq_len": 32, "schedule": "wsd", "decay": 0.2}


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


def test_a_rung_measures_what_a_run_of_that_budget_alone_measures():
    corpus = embedded_corpus()
    rungs = [5120, 15360, 46080]
    seen = []
    train(tiny_model(), corpus, TRAIN, torch.device("cpu"), rungs, report=lambda m: seen.append(m) or True)
    alone = train(tiny_model(), corpus, TRAIN, torch.device("cpu"), rungs[:2])
    assert [m.rung for m in seen] == [0, 1, 2] and [m.tokens_trained for m in seen] == rungs
    assert seen[1].val_loss == pytest.approx(alone.val_loss, abs=1e-6)
    assert seen[0].val_loss > seen[1].val_loss > seen[2].val_loss  # more tokens, lower loss


def test_training_resumed_from_a_rung_continues_as_if_never_stopped():
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


def test_rung_table_ranks_by_nondominated_sorting_and_never_puts_an_infeasible_result_first():
    table = RungTable(["min", "min"], reduction_factor=2)
    table.record(0, "a", [1.0, 5.0], 0.0)
    table.record(0, "b", [2.0, 2.0], 0.0)
    table.record(0, "c", [3.0, 6.0], 0.0)  # dominated by both
    table.record(0, "d", [0.5, 0.5], 0.3)  # dominates all, but infeasible
    table.record(0, "a", [9.0, 9.0], 0.0)  # a config recorded again (a resumed trial) counts once, as first told
    order = table.order(0)
    assert set(order[:2]) == {"a", "b"} and order[2:] == ["c", "d"]
    assert table.promotable(0, "a") and table.promotable(0, "b") and not table.promotable(0, "c")  # best 4 // 2
    assert not table.promotable(0, "d")
    assert table.goes_on(0, "a") and not table.promotable(0, "a") and table.goes_on(0, "a")  # promoted once, told again
    table.record(0, "e", [0.1, 0.1], 0.0)  # the new best: five results hold two places, one taken by a
    assert table.order(0)[0] == "e" and table.goes_on(0, "e") and not table.promotable(0, "b")  # no place left for b
    maximise = RungTable(["max"], reduction_factor=3)
    for key, value in (("x", 1.0), ("y", 3.0), ("z", 2.0)):
        maximise.record(1, key, [value], 0.0)
    assert maximise.order(1) == ["y", "z", "x"] and maximise.goes_on(1, "y") and not maximise.goes_on(1, "z")
    assert not RungTable(["min"], 3).goes_on(0, "alone")  # one result of one: it waits for two more


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


def test_asha_search_prunes_below_the_budget_and_completes_only_at_it(ray_local, tmp_path, capsys):
    result = search(write_space(tmp_path, ASHA), out=tmp_path / "run", address=ray_local, verbosity=1)
    printed = capsys.readouterr().out
    study, full = result.study, 46080
    measured = [t for t in study.trials if "reused_from" not in t.user_attrs and t.user_attrs.get("status")]
    assert len(measured) == 8  # --trials counts configs started
    pruned = [t for t in measured if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in measured if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and complete
    assert all(t.user_attrs["tokens_trained"] < full and t.user_attrs["status"] == "stopped" for t in pruned)
    assert all(t.user_attrs["tokens_trained"] == full and t.user_attrs["rung"] == 2 for t in complete)
    for trial in measured:  # every rung it passed is kept, with the objectives it was ranked by
        rungs = trial.user_attrs["rungs"]
        assert sorted(map(int, rungs)) == list(range(trial.user_attrs["rung"] + 1))
        assert rungs[str(trial.user_attrs["rung"])]["values"][0] == pytest.approx(trial.user_attrs["val_loss"])
    assert {t.number for t in study.best_trials} <= {t.number for t in complete}
    assert "rung 0 at 5,120 tokens" in printed and "-> waits" in printed and "-> goes on" in printed
    assert not (tmp_path / "run" / "checkpoints").exists()  # every trial ended: no state kept
    rungs = build_review(study).rungs  # the review counts what reached and stopped at each rung
    assert [r.rung for r in rungs] == [0, 1, 2] and rungs[0].reached == 8 and rungs[2].reached == len(complete)
    assert sum(r.stopped for r in rungs) == len(pruned) and rungs[2].stopped == 0
    assert 'id="rungs"' in (tmp_path / "run" / "report.html").read_text()


def test_killed_asha_search_resumes_a_config_after_its_last_rung(ray_local, tmp_path):
    space = write_space(tmp_path, ASHA.replace("tokens: 46080", "tokens: 737280").replace("min_tokens: 5120", "min_tokens: 81920")
                        .replace("trials: 8", "trials: 3"))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "configaformer_search.cli", "run", str(space), "--out", str(out),
               "--concurrency", "1", "--address", ray_local]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    try:
        for line in process.stdout:  # the first trial always goes on from rung 0: kill it while it trains rung 1
            if "-> goes on" in line:
                time.sleep(0.5)
                break
        else:
            pytest.fail("no trial went on from a rung")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    killed = [t for t in load_existing(default_storage(out)).trials if t.user_attrs.get("rungs")]
    assert killed and (out / "checkpoints").is_dir()
    assert main(["run", str(space), "--out", str(out), "--concurrency", "1", "-q"]) == 0
    study = load_existing(default_storage(out))
    first = min(killed, key=lambda t: t.number)
    resumed = [t for t in study.trials if t.user_attrs.get("resumes") == first.number]
    assert len(resumed) == 1 and resumed[0].user_attrs["config_key"] == first.user_attrs["config_key"]
    assert resumed[0].user_attrs["resumed_at_rung"] == max(map(int, first.user_attrs["rungs"]))  # no rung trained twice
    assert resumed[0].user_attrs["rungs"]["0"] == first.user_attrs["rungs"]["0"]  # its rung results kept
    assert study.trials[first.number].state == optuna.trial.TrialState.FAIL
    assert not (out / "checkpoints").exists()
