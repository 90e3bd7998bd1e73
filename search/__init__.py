"""configaformer-search: architecture search over configaformer configs (Ray Tune trials, Optuna study)."""
