"""Suggestions drawn in processes of their own (search.draw_processes): each is a trial of the shared study, with
its params stored and a heartbeat, screened as the driver screens; a refusal comes back whole; a closed process
draws nothing more."""

import pytest
from helpers import TINY_SPACE, write_space

from configaformer_search.candidate import resolve
from configaformer_search.drawers import DrawingProcess
from configaformer_search.errors import TrialFailure
from configaformer_search.records import study_trials
from configaformer_search.space import load_space
from configaformer_search.study import open_storage, open_study


def _study(tmp_path, text):
    space = load_space(write_space(tmp_path, text))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    return space, url, open_study(space, open_storage(url, writer=True))


def test_a_drawing_process_draws_trials_of_the_shared_study(tmp_path):
    space, url, study = _study(tmp_path, TINY_SPACE)
    process = DrawingProcess(url, study.study_name, space, "random", seed=3, budget=8, vocab_size=256)
    try:
        drawn = [process.draw(study) for _ in range(3)]
    finally:
        process.close()
    stored = {t.number: t for t in study_trials(study)}
    assert sorted(stored) == [d.trial.number for d in drawn] == [0, 1, 2]
    for one in drawn:
        assert stored[one.trial.number].state.name == "RUNNING" and stored[one.trial.number].params == one.params
        assert one.key == resolve(space, one.params, 256)[2] and one.refusal is None
    heartbeats = study._storage._backend.engine.connect().exec_driver_sql("SELECT trial_id FROM trial_heartbeats").fetchall()
    assert sorted(row[0] for row in heartbeats) == sorted(d.trial._trial_id for d in drawn)
    with pytest.raises((EOFError, OSError)):
        process.draw(study)


def test_a_refusal_comes_back_with_its_reason(tmp_path):
    space, url, study = _study(tmp_path, TINY_SPACE + "constraints: {params: {max: 10}}\n")
    process = DrawingProcess(url, study.study_name, space, "random", seed=0, budget=8, vocab_size=256)
    try:
        drawn = process.draw(study)
    finally:
        process.close()
    assert isinstance(drawn.refusal, TrialFailure) and drawn.refusal.kind == "constraint"
    assert "params" in drawn.refusal.message and drawn.refusal.metrics["params"] > 10
