"""Baselines: fixed configs measured like any trial (synthetic trials over a real study), kept off the budget and
the front, compared with the front member by member, and exported against (`export --beats`)."""

import pytest
from helpers import write_space
from test_driver import SPACE, driver

from configaformer_search.candidate import resolve
from configaformer_search.cli import main
from configaformer_search.driver.synthetic import SyntheticCluster
from configaformer_search.review import read_review

BASELINES = SPACE.replace("search: {trials: 8, sampler: random, scheduler: asha, min_tokens: 5120}",
                          "search: {trials: 8, sampler: random, scheduler: asha, min_tokens: 5120}\n"
                          "baselines:\n"
                          "  - {name: small-gpt, params: {width: 32, depth: 1, heads: 2}}\n"
                          "  - name: layered\n"
                          "    model: {dim_model: 48, position: rope, dim_rope: 8, layers: [{type: Attention, heads: 4}, "
                          "{type: FFN, ff_mult: 4}]}\n")


def test_baselines_are_measured_at_the_full_budget_off_the_budget_and_the_front(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    d = driver(tmp_path, BASELINES, trials=8)
    SyntheticCluster(d, slots=2).run()
    review = read_review(url)
    assert len(review.measured) == 8  # the baselines took no place of the budget
    names = {t.baseline: t for t in review.baselines}
    assert set(names) == {"small-gpt", "layered"}
    for row in names.values():
        trial = review.stored(row.number)
        assert trial.state == "PRUNED" and trial.user_attrs["rung"] == 2 and not row.on_front  # the full budget
        assert row.values == tuple(trial.user_attrs[n] for n in review.names)
    assert names["layered"].params == {} and names["small-gpt"].params == {"width": 32, "depth": 1, "heads": 2}
    layered = next(b for b in d.space.baselines if b.name == "layered")
    key = resolve(d.space, {}, 256, layered.model)[2]  # its own layer config, not the space's
    assert review.stored(names["layered"].number).user_attrs["config_key"] == key
    lines = review.baseline_lines()
    assert len(lines) == 2 and all(line.startswith("baseline ") for line in lines)
    for baseline in review.baselines:  # a member that beats it is at least as good everywhere, better somewhere
        for member in review.beaten_by(baseline):
            assert all(m <= b for m, b in zip(member.values, baseline.values)) and member.values != baseline.values
            assert f"#{member.number}: val_loss" in "".join(lines)


def test_export_beats_picks_the_best_front_member_at_least_as_good_as_a_baseline(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    d = driver(tmp_path, BASELINES, trials=8, url=f"sqlite:///{out / 'study.db'}")
    SyntheticCluster(d, slots=2).run()
    d.store.close()
    review = read_review(f"sqlite:///{out / 'study.db'}")
    beaten = review.beaten_by(next(b for b in review.baselines if b.baseline == "small-gpt"))
    code = main(["export", str(out), "--beats", "small-gpt", "-o", str(tmp_path / "beats.yaml")])
    if beaten:
        assert code == 0 and f"exported trial #{min(beaten, key=lambda t: t.values[0]).number}" in capsys.readouterr().out
    else:
        assert code == 2 and "no front member is at least as good as baseline small-gpt" in capsys.readouterr().err
    assert main(["export", str(out), "--beats", "nobody"]) == 2
    assert "--beats nobody: no measured baseline of that name (baselines: layered, small-gpt)" in capsys.readouterr().err


@pytest.mark.parametrize("entry, why", [
    ("{name: x, params: {width: 33, depth: 1, heads: 2}}", "baselines[0].params.width: 33 is not a value params.width can take"),
    ("{name: x, params: {width: 32, depth: 1}}", "baselines[0].params: expected a value for every searched parameter"),
    ("{name: x, params: {size: 1}}", "baselines[0].params.size: names no searched parameter"),
    ("{params: {width: 32, depth: 1, heads: 2}}", "baselines[0].name: expected a simple name"),
])
def test_a_bad_baseline_is_one_line_naming_its_field(tmp_path, capsys, entry, why):
    text = SPACE + f"baselines:\n  - {entry}\n"
    assert main(["validate", str(write_space(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert why in err and err.count("\n") == 1
