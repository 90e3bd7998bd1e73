"""The timing probes run where the model will be served: on a node of the Ray cluster that offers the custom resource
the space's probes.target names (a node started with `ray start --resources '{"serving_cpu": 1}' --num-cpus 0`, so
that no trial trains there). The trained model travels as its config and weights; the timing task takes the whole
resource, so that one timing runs at a time on each target node, with probes.threads threads."""

from __future__ import annotations

from typing import Any

import torch

from ..devicegate import DeviceGate
from .base import ProbeContext


def time_on_target(space: Any, context: ProbeContext) -> dict[str, Any]:
    """The space's timing probes' metrics, measured on its target node (`timed_on` names the node)."""
    import ray

    state = {k: v.detach().cpu() for k, v in context.model.state_dict().items()}
    # "DEFAULT": outside the trial's placement group, which Ray Tune has its child tasks inherit
    task = ray.remote(_timed_here).options(num_cpus=0, resources={space.probes["target"]: 1}, scheduling_strategy="DEFAULT")
    with DeviceGate.of(context.device).aside():  # a wait that does no work here: a target on this machine may time
        return ray.get(task.remote(space, context.model_config, state, context.train, context.vocab_size))


def _timed_here(space: Any, model_config: dict, state: dict, train: dict, vocab_size: int) -> dict[str, Any]:
    """The Ray task on the target: the model rebuilt from its config and weights, the timing probes run on its CPU."""
    import ray

    from configaformer import ConfigaFormer

    from . import run_probes

    model = ConfigaFormer.from_config(model_config, verbose=False)
    model.load_state_dict(state)
    context = ProbeContext(model, model_config, torch.device("cpu"), train, space.probes, vocab_size)
    return {**run_probes(space, context, timing=True), "timed_on": ray.get_runtime_context().get_node_id()[:12]}
