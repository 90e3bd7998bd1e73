"""Configs round-trip through YAML and JSON and rebuild the same model."""

import pytest
import torch
import yaml
from helpers import attn_offset_streams, gpt_blocks, layer_config

from configaformer import ConfigaFormer, ConfigError, get_alibi, load_config, save_config
from configaformer.io import load_document


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_layer_config_round_trips_to_identical_outputs(tmp_path, suffix):
    original = ConfigaFormer.from_config(layer_config(), verbose=False).eval()
    path = tmp_path / f"model{suffix}"
    save_config(layer_config(), path, metadata={"val_loss": 1.5})
    rebuilt = ConfigaFormer.from_config(path, verbose=False).eval()
    assert rebuilt.num_params() == original.num_params()
    rebuilt.load_state_dict(original.state_dict())
    ids = torch.randint(0, 97, (2, 9))
    torch.testing.assert_close(rebuilt({"emb_ids": ids})["logits_1"], original({"emb_ids": ids})["logits_1"])
    document = load_document(path)
    assert document["kind"] == "layers" and document["metadata"] == {"val_loss": 1.5}


@pytest.mark.parametrize("suffix", [".yml", ".json"])
def test_op_config_from_a_built_model_round_trips(tmp_path, suffix):
    original = ConfigaFormer({"blocks": gpt_blocks()}, attn_offset_streams(), verbose=False).eval()
    path = tmp_path / f"ops{suffix}"
    save_config(original.config, path)
    rebuilt = ConfigaFormer.from_config(path, verbose=False).eval()
    assert rebuilt.summary() == original.summary()
    rebuilt.load_state_dict(original.state_dict())
    data = {"emb_ids": torch.randint(0, 101, (1, 7)), "attn_offset": get_alibi(4)}
    torch.testing.assert_close(rebuilt(data)["x"], original(data)["x"])


def test_saved_file_is_versioned_plain_yaml(tmp_path):
    path = tmp_path / "m.yaml"
    save_config(layer_config(), path)
    data = yaml.safe_load(path.read_text())
    assert data["format_version"] == 1 and data["kind"] == "layers" and data["model"]["dim_model"] == 64
    assert load_config(path) == layer_config()


def test_loading_refuses_unsafe_yaml_and_other_versions(tmp_path):
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("dim_model: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="unsafe.yaml: not valid YAML"):
        load_config(unsafe)
    future = tmp_path / "future.yaml"
    future.write_text("format_version: 99\nmodel: {}\n")
    with pytest.raises(ConfigError, match="format_version: this library reads version 1, got 99"):
        load_config(future)
    with pytest.raises(ConfigError, match="missing.yaml: file not found"):
        load_config(tmp_path / "missing.yaml")


def test_errors_from_a_file_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    save_config(layer_config(layers=[{"type": "Attention", "heads": 7}]), path)
    with pytest.raises(ConfigError, match=r"bad.yaml: layers\[0\].heads"):
        ConfigaFormer.from_config(path, verbose=False)
