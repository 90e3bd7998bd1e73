"""Suggestions drawn in a process of its own (search.draw_processes): each is a trial of the shared study, with its
params stored and a heartbeat, screened as the driver screens, a refusal coming back whole; a closed process draws
nothing more."""

import pytest
from helpers import TINY_SPACE, write_space

from configaformer_search.candidate import resolve
from configaformer_search.driver.drawers import DrawingProcess
from configaformer_search.errors import TrialFailure
from configaformer_search.space import load_space
from configaformer_search.storage import StudyStore, open_storage


def _study(tmp_path, text):
    space = load_space(write_space(tmp_path, text))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    return space, url, StudyStore.open(open_storage(url), space.name, space.objectives, distributions=space.distributions())


@pytest.mark.slow
def test_a_drawing_process_draws_screened_trials_of_the_shared_study(tmp_path):
    space, url, store = _study(tmp_path, TINY_SPACE + "constraints: {params: {max: 30000}}\n")  # width 48 is over it
    process = DrawingProcess(url, store.name, space, "random", seed=3, budget=8, vocab_size=256)
    try:
        drawn = [process.draw(store) for _ in range(4)]
    finally:
        process.close()
    stored = {t.number: t for t in store.trials()}
    assert sorted(stored) == [d.number for d in drawn] == [0, 1, 2, 3]
    for one in drawn:
        assert stored[one.number].state == "RUNNING" and stored[one.number].params == one.params
        assert one.trial_id == stored[one.number].trial_id == one.trial._trial_id  # a handle on the stored trial
        assert one.key == resolve(space, one.params, 256)[2]
        if one.params["width"] == 48:  # refused by the screen, and the refusal comes back whole
            assert isinstance(one.refusal, TrialFailure) and one.refusal.kind == "constraint"
            assert "params" in one.refusal.message and one.refusal.metrics["params"] > 30000
        else:
            assert one.refusal is None
    assert {one.refusal is None for one in drawn} == {True, False}
    heartbeats = store._query("SELECT trial_id FROM trial_heartbeats", {})
    assert sorted(row[0] for row in heartbeats) == sorted(d.trial_id for d in drawn)
    with pytest.raises((EOFError, OSError)):
        process.draw(store)
    store.close()
