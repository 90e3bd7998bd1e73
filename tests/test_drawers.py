"""Suggestions drawn in a process of its own (search.draw_processes): each is a trial of the shared study, with its
params stored and a heartbeat, screened as the driver screens, a refusal coming back whole; a closed process draws
nothing more."""

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


def test_a_drawing_process_draws_screened_trials_of_the_shared_study(tmp_path):
    space, url, study = _study(tmp_path, TINY_SPACE + "constraints: {params: {max: 30000}}\n")  # width 48 is over it
    process = DrawingProcess(url, study.study_name, space, "random", seed=3, budget=8, vocab_size=256)
    try:
        drawn = [process.draw(study) for _ in range(4)]
    finally:
        process.close()
    stored = {t.number: t for t in study_trials(study)}
    assert sorted(stored) == [d.trial.number for d in drawn] == [0, 1, 2, 3]
    for one in drawn:
        assert stored[one.trial.number].state.name == "RUNNING" and stored[one.trial.number].params == one.params
        assert one.key == resolve(space, one.params, 256)[2]
        if one.params["width"] == 48:  # refused by the screen, and the refusal comes back whole
            assert isinstance(one.refusal, TrialFailure) and one.refusal.kind == "constraint"
            assert "params" in one.refusal.message and one.refusal.metrics["params"] > 30000
        else:
            assert one.refusal is None
    assert {one.refusal is None for one in drawn} == {True, False}
    heartbeats = study._storage._backend.engine.connect().exec_driver_sql("SELECT trial_id FROM trial_heartbeats").fetchall()
    assert sorted(row[0] for row in heartbeats) == sorted(d.trial._trial_id for d in drawn)
    with pytest.raises((EOFError, OSError)):
        process.draw(study)
