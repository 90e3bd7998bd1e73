"""The CUDA paths: fused attention kernels in bf16, and a trial's bf16 training, measured memory and latency.
Skipped on machines without a GPU."""

import pytest
import torch
from helpers import write_space

from configaformer import ConfigaFormer
from configaformer_search import trial
from configaformer_search.space import load_space

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_fused_attention_matches_explicit_on_cuda_in_bf16(position):
    config = {"dim_model": 256, "vocab_size": 256, "dim_rope": 16, "position": position,
              "layers": [{"type": "Attention", "heads": 4, "kv_heads": 2}, {"type": "FFN"}] * 2}
    fused = ConfigaFormer.from_config(config, verbose=False).cuda()
    explicit = ConfigaFormer.from_config(config, verbose=False, fuse_attention=False).cuda()
    explicit.load_state_dict(fused.state_dict())
    ids = torch.randint(0, 256, (4, 512), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a = fused({"emb_ids": ids})["logits_0"].float()
        b = explicit({"emb_ids": ids})["logits_0"].float()
    torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)


def test_trial_on_cuda_measures_memory_and_latency(tmp_path):
    space = load_space(write_space(tmp_path))
    metrics = trial.run(space, {"width": 48, "heads": 4, "position": "rope", "dim_rope": 8}, device="cuda")
    assert metrics["status"] == "ok", metrics
    assert metrics["device"] == "cuda" and metrics["peak_mem_source"] == "measured"
    assert metrics["peak_mem_mb"] > 4 * metrics["params"] * 4 / 2**20  # weights, grads and AdamW state, at least
    assert metrics["latency_ms"] > 0 and metrics["val_bpb"] < 6.5
    print({k: metrics[k] for k in ("val_bpb", "train_tok_s", "peak_mem_mb", "latency_ms", "latency_cv")})


def test_latency_probe_has_the_gpu_to_itself():
    import threading
    import time

    from configaformer_search.devicegate import DeviceGate

    device = torch.device("cuda")
    steps, stop = [0], threading.Event()

    def trainer():
        x = torch.randn(1024, 1024, device=device)
        with DeviceGate(device).sharing() as checkpoint:
            while not stop.is_set():
                checkpoint()
                x = (x @ x).tanh()
                steps[0] += 1

    thread = threading.Thread(target=trainer)
    thread.start()
    time.sleep(0.5)
    with DeviceGate(device).exclusive():
        paused_at = steps[0]
        time.sleep(0.5)
        assert steps[0] == paused_at  # the trainer waits at the gate while the probe holds the device
    time.sleep(0.5)
    stop.set()
    thread.join()
    assert steps[0] > paused_at  # and carries on afterwards
