"""The names a space and the command line choose from, declared once."""

SAMPLERS = ("tpe", "nsga2", "random")  # Optuna's samplers, sized to the budget (driver/samplers.py)
SCHEDULERS = ("fifo", "asha")  # every trial trains its full budget; or successive halving over rungs of tokens
RUNTIMES = ("eager", "compile", "onnxruntime")  # what the timing probes time the model on (probes/runtimes.py)
