"""A Ray cluster of several nodes, simulated on one machine: trials train on both training nodes, and every timing
probe runs where the model will be served, on a target node that trains nothing, one timing at a time."""

import subprocess
import sys

import pytest
from helpers import TINY_SPACE, write_space

from configaformer_search.storage import default_storage, read_study

SERVED = TINY_SPACE.replace("tokens: 49152", "tokens: 8192").replace("eval_tokens: 4096", "eval_tokens: 1024") \
    .replace("probes: {latency_repeats: 5, latency_warmup: 1}",
             "probes: {latency_repeats: 5, latency_warmup: 1, decode: true, decode_context: 32, target: serving_cpu}")


@pytest.mark.slow
def test_trials_train_on_every_training_node_and_are_timed_on_the_serving_target_only(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    target = cluster.add_node(num_cpus=0, resources={"serving_cpu": 1})  # no trial can train there
    try:
        cluster.wait_for_nodes()
        out = tmp_path / "run"
        done = subprocess.run([sys.executable, "-m", "configaformer_search.cli", "run", str(write_space(tmp_path, SERVED)),
                               "--out", str(out), "--address", cluster.address], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "3 node(s), 2 CPUs" in done.stdout and "2 trials at a time" in done.stdout, done.stdout[:2000]
        trials = [t for t in read_study(default_storage(out)).trials if t.finished and t.outcome.counts]
        assert [t.outcome.kind.name for t in trials] == ["measured"] * 4, [t.user_attrs.get("message") for t in trials]
        trained_on = {t.user_attrs["node"] for t in trials}
        assert trained_on == {cluster.head_node.node_id[:12], worker.node_id[:12]}  # both training nodes, never the target
        for trial in trials:
            attrs = trial.user_attrs
            assert attrs["timed_on"] == target.node_id[:12]
            assert attrs["latency_ms"] > 0 and attrs["decode_ms"] > 0 and attrs["prefill_ms"] > 0
    finally:
        cluster.shutdown()
