"""Search-space YAML: loading, sampling, resolving, and one clean line for every kind of bad input."""

from pathlib import Path

import optuna
import pytest
from helpers import TINY_SPACE, write_space

from configaformer import ConfigaFormer
from configaformer_search.cli import main
from configaformer_search.errors import SpaceError
from configaformer_search.space import load_space

SPACES = sorted((Path(__file__).parent.parent / "spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem == "gpt2" else p for p in SPACES],
                         ids=lambda p: p.name)  # gpt2.yaml builds GPT-2-sized models: the slow tier
def test_every_ready_space_validates(path, capsys):
    assert main(["validate", str(path), "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert f"space '{path.stem}'" in out and "params " in out


def test_ready_spaces_cover_the_issue():
    assert {p.stem for p in SPACES} >= {"small", "gpt2", "hetero"}
    small = load_space(SPACES[[p.stem for p in SPACES].index("small")])
    assert {"width", "depth", "heads", "dim_rope", "ff_mult", "norm", "position"} <= set(small.params)


def sample(space, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return space.sample(study.ask())


def test_named_params_bind_several_places_and_conditions_switch_params(tmp_path):
    space = load_space(write_space(tmp_path))
    assert space.size() == 2 * 2 * 2 * 2
    seen = set()
    for seed in range(12):
        params = sample(space, seed)
        assert ("dim_rope" in params) == (params["position"] == "rope")
        model, train = space.resolve(params, 256)
        assert model["dim_model"] == params["width"] and model["layers"][0]["heads"] == params["heads"]
        assert model["vocab_size"] == 256 and model["max_length"] == 32 and train["lr"] == pytest.approx(1e-2)
        ConfigaFormer.from_config(model, verbose=False)
        seen.add(params["position"])
    assert seen == {"rope", "alibi"}


def test_per_layer_params_give_heterogeneous_stacks():
    space = load_space(Path(__file__).parent.parent / "spaces" / "hetero.yaml")
    for seed in range(5):
        params = sample(space, seed)
        model, _ = space.resolve(params, 256)
        attention = [layer for layer in model["layers"] if layer["type"] == "Attention"]
        assert len(attention) == params["depth"]
        assert [layer["heads"] for layer in attention] == [params[f"heads[{i}]"] for i in range(params["depth"])]
    assert space.size() == 3 * (3 * 3) ** 4


def test_inline_distributions_and_searched_training(tmp_path):
    text = TINY_SPACE.replace("dim_model: $width", "dim_model: {choice: [16, 24]}").replace("lr: 1e-2", "lr: {log: [1e-4, 1e-2]}")
    space = load_space(write_space(tmp_path, text.replace("  width: {choice: [32, 48]}\n", "")))
    assert {"model.dim_model", "train.lr"} <= set(space.params) and space.size() is None
    params = sample(space)
    model, train = space.resolve(params, 256)
    assert model["dim_model"] in (16, 24) and 1e-4 <= train["lr"] <= 1e-2


def test_choices_are_recorded_as_themselves_and_lists_as_json(tmp_path):
    text = TINY_SPACE.replace("  heads: {choice: [2, 4]}\n", "  heads: {choice: [2, 4]}\n  act: {choice: [gelu, [silu, none]]}\n") \
        .replace("{type: FFN, ff_mult: 2}", "{type: FFN, ff_mult: 2, activation: $act}")
    space = load_space(write_space(tmp_path, text))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [space.sample(study.ask())["act"] for _ in range(12)]
    assert {"gelu", ("silu", "none")} == {a if isinstance(a, str) else tuple(a) for a in drawn}
    recorded = {t.params["act"] for t in study.trials}  # what the trials table, the front and exports show
    assert recorded == {"gelu", '["silu", "none"]'}
    for trial, act in zip(study.trials, drawn):  # read back (retrain, a resumed config), each is the value drawn
        assert space.values_of(trial.params) == {**trial.params, "act": act}
    model, _ = space.resolve({**sample(space), "act": ["silu", "none"]}, 256)
    ConfigaFormer.from_config(model, verbose=False)


BAD = {
    "not_yaml": ("name: [unclosed", "not valid YAML at line 1"),
    "not_mapping": ("- 1\n- 2", "(top level): expected a mapping"),
    "unknown_section": (TINY_SPACE + "extras: 1\n", "extras: unknown section"),
    "bad_distribution": (TINY_SPACE.replace("{choice: [32, 48]}", "{choice: []}"), "params.width.choice: expected a non-empty list"),
    "two_kinds": (TINY_SPACE.replace("{choice: [32, 48]}", "{choice: [32], int: [1, 2]}"), "params.width: expected exactly one of"),
    "reversed_bounds": (TINY_SPACE.replace("{choice: [32, 48]}", "{int: [48, 32]}"), "params.width.int: expected [low, high] with low < high, got [48, 32]"),
    "float_int_bounds": (TINY_SPACE.replace("{choice: [32, 48]}", "{int: [1.5, 3]}"), "params.width.int: expected integer bounds"),
    "log_of_zero": (TINY_SPACE.replace("{choice: [32, 48]}", "{log: [0, 3]}"), "params.width.log: expected positive bounds"),
    "undeclared_ref": (TINY_SPACE.replace("dim_model: $width", "dim_model: $wdth"), "model.dim_model: reference $wdth names no parameter"),
    "unused_param": (TINY_SPACE.replace("dim_model: $width", "dim_model: 32"), "params.width: declared but never referenced"),
    "bad_condition": (TINY_SPACE.replace("if: {position: rope}", "if: {position: sinusoidal}"), "params.dim_rope.if.position: ['sinusoidal'] matches none"),
    "condition_order": (TINY_SPACE.replace("if: {position: rope}", "if: {later: 1}") + "", "params.dim_rope.if.later: a condition must name a parameter"),
    "no_model": (TINY_SPACE.replace("model:", "modl:"), "modl: unknown section"),
    "model_without_layers": (TINY_SPACE.replace("  layers:", "  stack:"), "model: expected a layer config"),
    "bad_train_key": (TINY_SPACE.replace("lr: 1e-2", "learning_rate: 1e-2"), "train.learning_rate: unknown key; known: batch_size"),
    "bad_train_value": (TINY_SPACE.replace("batch_size: 16", "batch_size: -4"), "train.batch_size: expected a positive number, got -4"),
    "bad_objective": (TINY_SPACE.replace("val_loss: min,", "accuracy: max,"), "objectives.accuracy: unknown metric"),
    "bad_direction": (TINY_SPACE.replace("val_loss: min,", "val_loss: lowest,"), "objectives.val_loss: expected min or max, got 'lowest'"),
    "bad_constraint": (TINY_SPACE + "constraints: {params: 1000}\n", "constraints.params: expected {max: number}"),
    "bad_sampler": (TINY_SPACE.replace("sampler: random", "sampler: grid"), "search.sampler: expected one of 'tpe', 'nsga2', 'random'"),
    "missing_data_file": (TINY_SPACE.replace("{source: embedded}", "{source: text, path: nowhere.txt}"), "data.path: no such file"),
    "tokens_without_vocab": (TINY_SPACE.replace("{source: embedded}", "{source: tokens, path: space.yaml}"), "data.vocab_size: a token file needs its vocab_size"),
    "per_layer_without_repeat": (TINY_SPACE.replace("{choice: [2, 4]}", "{choice: [2, 4], per_layer: true}").replace("    repeat: 1\n    each:\n", "").replace("      - {type: A", "    - {type: A").replace("      - {type: F", "    - {type: F"), "params.heads.per_layer: per-layer parameters need"),
    "searched_length_without_probe_length": (TINY_SPACE.replace("seq_len: 32", "seq_len: {choice: [32, 64]}"), "probes.seq_len: required when train.seq_len is searched"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_space_is_one_line_and_exit_2(tmp_path, capsys, name):
    text, why = BAD[name]
    path = write_space(tmp_path, text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert why in str(info.value) and str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    assert main(["validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err and why in captured.err


def test_missing_space_file_exits_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: file not found" in capsys.readouterr().err
