"""The samplers a space can name, each sized to the trial budget. Constraints reach them through each trial's
constraint values (Trial.set_constraint), which Optuna 5's samplers read themselves."""

from __future__ import annotations

import warnings

import optuna

from ..space import SearchSpace

optuna.logging.set_verbosity(optuna.logging.WARNING)  # Optuna logs every study it creates: users see our output only


def random_draws(seed: int) -> optuna.Study:
    """An in-memory study whose trials draw params at random, for drawing configs outside a search (validate,
    calibrate, the check that a space builds anything)."""
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))


def make_sampler(space: SearchSpace, name: str, seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    """TPE, NSGA-II or random, sized to the trial budget. TPE models the params that are drawn together jointly
    (`group`): a conditional param, or a baseline that draws only its training settings, would otherwise leave every
    param to be modelled on its own."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        population = space.search["population_size"] or max(4, min(50, n_trials // 4))  # the default 50 is all random on small budgets
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    startup = space.search["startup_trials"] or max(3, min(10, n_trials // 4))  # few random trials before TPE models
    with warnings.catch_warnings():  # `group` is marked experimental since Optuna 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(n_startup_trials=startup, seed=seed, multivariate=True, group=True)
