"""`configaformer-search calibrate SPACE`: is the space's training budget long enough to rank configs, before a long
search spends it? Samples K configs, trains each at the budget on two seeds and once at M times the budget on a third
seed (through the search's Ray trial runner, packed like trials), and says how much of the spread across configs is
seed noise, whether the two seeds rank the configs alike, whether the budget ranks them as the longer one does (from
one seed, as a search measures, and from the mean of two), how successive halving's first rung ranks them against
the full budget (for a space that uses it), and whether parameter counts would rank them as well.

Every run is appended to `calibration.jsonl` in the run folder as it ends, so a killed calibration, run again, trains
only what is missing. The tables (`calibration.csv` a config each, `calibration_summary.csv` an objective each) and
`calibration.png` are written from that file.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd

from .errors import TrialFailure, UsageError
from .jobs import Job
from .metrics import METRICS
from .outcome import is_measured, outcome_of
from .progress import plural
from .ranking import kendall, noise_band, paired_sd, spearman
from .space import SearchSpace

RESULTS_FILE = "calibration.jsonl"
MAX_DRAWS_PER_CONFIG = 50  # sampled candidates per wanted config before the space counts as too constrained


@dataclass(frozen=True)
class Config:
    """One sampled config: its index in the sample, params, key, the cheap metrics, and its budget."""

    index: int
    params: dict[str, Any]
    key: str
    metrics: dict[str, float]
    tokens: int  # the space's budget for it
    warmup_budget: int  # the first rung (the budget itself under fifo): where the warm-up fraction is taken


@dataclass(frozen=True)
class Run:
    """One training run of a config: on a seed, for a budget (the space's, or mult times it), measured at `budgets`
    on the way (the space's rungs, for the first seed's run of a multi-fidelity space)."""

    config: Config
    seed: int
    mult: int  # 1 at the space's budget
    budgets: tuple[int, ...] = ()

    @property
    def tokens(self) -> int:
        return self.config.tokens * self.mult

    @property
    def name(self) -> str:
        return f"{self.config.key}/seed{self.seed}/{self.tokens}"

    def describe(self) -> str:
        return f"config {self.config.index} seed {self.seed}, {self.tokens:,} tokens"

    def job(self) -> Job:
        return Job(self.name, self.config.params, self.seed, self.budgets or (self.tokens,),
                   self.config.warmup_budget * self.mult)


@dataclass
class Agreement:
    """What calibration found for one trained objective."""

    objective: str
    configs: int  # configs with all three runs measured
    seed_sd: float  # of one run, pooled over the configs' two seeds
    spread: float  # sd of the configs' two-seed means
    rho_seeds: float
    tau_seeds: float
    rho_budgets: float  # one seed at the budget (what a search measures) against the longer budget
    tau_budgets: float
    rho_budgets_mean: float  # the two seeds' mean at the budget against the longer budget
    tau_budgets_mean: float
    rho_proxy: float  # non-embedding parameters (more is better) against the longer budget
    rho_predictor: float = math.nan  # with a target: the study-level predictor, given the brief curves, against it
    rho_first_rung: float = math.nan  # successive halving's first rung against the full budget (one seed)
    tau_first_rung: float = math.nan

    def noise(self, seeds: int = 1) -> float:
        return noise_band(self.seed_sd, seeds)


@dataclass
class Calibration:
    space: SearchSpace
    configs: list[Config]
    mult: int
    out: Path  # the folder of its results and outputs
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # run name -> its record

    @property
    def seeds(self) -> tuple[int, int, int]:
        """The budget's two seeds, and the longer run's own (so that it shares no weights or batches with them)."""
        base = self.space.train["seed"]
        base = base if isinstance(base, int) else 0
        return base, base + 1, base + 2

    @property
    def rungs(self) -> list[int]:
        """Successive halving's rungs up to the budget, which the first seed's run measures on the way (one under
        fifo, and with a target, whose ladder starts at the budget)."""
        return [r for r in self.space.rungs() if r <= self.space.train["tokens"]]

    @property
    def curve(self) -> list[int]:
        """With a target, the brief curve's budgets below the budget, which a search measures on the way and the
        predictor of the loss at the target learns from; none without one."""
        return self.space.curve_points() if self.space.target else []

    def config_runs(self, config: Config) -> tuple[Run, Run, Run]:
        """A config's runs: the first seed at the budget (at each rung and curve point), the second seed, the longer
        run."""
        first, second, third = self.seeds
        budgets = sorted({*self.rungs, *self.curve})
        return Run(config, first, 1, tuple(budgets) if len(budgets) > 1 else ()), Run(config, second, 1), Run(config, third, self.mult)

    def runs(self) -> list[Run]:
        """Every run, the long one of each config first: the longest work starts early and the tail stays short."""
        return [run for c in self.configs for run in reversed(self.config_runs(c))]

    def missing(self) -> list[Run]:
        return [run for run in self.runs() if run.name not in self.results]

    def objectives(self) -> list[str]:
        """The space's objectives that training makes and seeds vary (val_loss when it has none)."""
        return [m for m in self.space.objectives if METRICS[m].seeded] or ["val_loss"]

    def columns(self, metric: str) -> tuple[str, str, str]:
        """The table's columns of one objective: the first seed, the second seed, the longer budget."""
        first, second, _ = self.seeds
        return f"{metric}@seed{first}", f"{metric}@seed{second}", f"{metric}@{self.mult}x"

    def value(self, run: Run, metric: str, tokens: Optional[int] = None) -> Optional[float]:
        """A run's measured value of `metric`, at its end or at `tokens` on the way."""
        record = self.results.get(run.name) or {}
        if not is_measured(record):
            return None
        value = record.get(metric) if tokens is None else (record.get("at") or {}).get(str(tokens), {}).get(metric)
        return float(value) if isinstance(value, (int, float)) else None

    def table(self) -> pd.DataFrame:
        """A config a row: params, parameter counts, each objective on each seed and at the longer budget, and
        why a run failed."""
        rows = []
        for config in self.configs:
            a, b, long = self.config_runs(config)
            row = {"config": config.index, "key": config.key, "params": config.metrics["params"],
                   "nonemb_params": config.metrics["nonemb_params"]}
            for metric in self.objectives():
                row.update(zip(self.columns(metric), (self.value(a, metric), self.value(b, metric), self.value(long, metric))))
                if len(self.rungs) > 1:
                    row[f"{metric}@rung0"] = self.value(a, metric, self.rungs[0])
            failures = [f"{run.describe()}: {outcome_of(self.results[run.name]).kind.name}" for run in (long, a, b)
                        if run.name in self.results and not is_measured(self.results[run.name])]
            row["failed"] = "; ".join(failures)
            row.update({f"param:{k}": v for k, v in config.params.items()})
            rows.append(row)
        return pd.DataFrame(rows).set_index("config")

    def agreements(self) -> list[Agreement]:
        """Seed noise, spread and rank agreement for each trained objective, over the configs measured thrice."""
        found, table = [], self.table()
        for metric in self.objectives():
            sign = 1.0 if self.space.objectives.get(metric, "min") == "min" else -1.0
            columns = list(self.columns(metric))
            done = table.dropna(subset=columns)
            a, b, long = (done[c].to_numpy(dtype=float) for c in columns)
            means = (a + b) / 2
            proxy = -sign * done["nonemb_params"].to_numpy(dtype=float)  # more parameters: a better value expected
            agreement = Agreement(metric, len(done), paired_sd(a, b), float(np.std(means, ddof=1)) if len(done) > 1 else math.nan,
                                  spearman(a, b), kendall(a, b), spearman(a, long), kendall(a, long),
                                  spearman(means, long), kendall(means, long), spearman(proxy, long))
            if f"{metric}@rung0" in done:
                first = done[f"{metric}@rung0"].to_numpy(dtype=float)
                agreement.rho_first_rung, agreement.tau_first_rung = spearman(first, a), kendall(first, a)
            if metric == "val_loss" and self.curve and len(done) >= 3:
                agreement.rho_predictor = spearman(self.predicted([self.configs[i] for i in done.index]), long)
            found.append(agreement)
        return found

    def predicted(self, configs: Sequence[Config]) -> list[float]:
        """Each config's val_loss at the longer budget as the search's predictor would tell it, fitted on what the
        first seed's runs measured at and below the budget (as a search's first rung, before anything climbs)."""
        from .predictor import StudyData, TargetPredictor, config_features

        data, budget = StudyData(), configs[0].tokens
        for config in configs:
            at = self.results[self.config_runs(config)[0].name].get("at") or {}
            data.add(config.key, config_features(config.params, config.metrics),
                     {int(tokens): values["val_loss"] for tokens, values in at.items() if "val_loss" in values})
        if len({tokens for points in data.points.values() for tokens in points}) < 2:
            return [math.nan] * len(configs)  # a single budget: nothing to tell how the loss falls with more tokens
        try:
            predictor = TargetPredictor(budget, budget * self.mult).fit(data, check=False)
        except (np.linalg.LinAlgError, ValueError, FloatingPointError) as err:  # the other rankings stand; this one is left blank
            logging.getLogger(__name__).warning("the predictor could not be fitted on the brief curves: %s", err)
            return [math.nan] * len(configs)
        return [predictor.predict(config.key).mean for config in configs]


def sample_configs(space: SearchSpace, vocab_size: int, count: int) -> list[Config]:
    """`count` distinct configs that pass the cheap screen, drawn at random from the space (seeded by
    search.seed, so that the same command calibrates the same configs)."""
    from .candidate import screen
    from .driver.samplers import random_draws

    study = random_draws(space.search["seed"])
    configs: list[Config] = []
    keys: set[str] = set()
    warmup = space.rungs()[0]
    for _ in range(count * MAX_DRAWS_PER_CONFIG):
        params = space.sample(study.ask())
        try:
            candidate = screen(space, params, vocab_size)
        except TrialFailure:
            continue
        if candidate.key in keys:
            continue
        keys.add(candidate.key)
        tokens = candidate.train["tokens"]
        configs.append(Config(len(configs), params, candidate.key, candidate.metrics, tokens,
                              warmup if len(space.rungs()) > 1 else tokens))
        if len(configs) == count:
            break
    if len(configs) < 3:
        raise UsageError(f"{space.path}: only {len(configs)} distinct configs pass the cheap screen in "
                         f"{count * MAX_DRAWS_PER_CONFIG} draws; calibration ranks at least 3")
    return configs


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """The runs recorded so far (a line each); a line cut short by a kill is skipped and run again."""
    results = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                results[entry["run"]] = entry
            except (ValueError, KeyError, TypeError):
                continue
    return results


def train_runs(space: SearchSpace, runs: list[Run], results: dict[str, dict[str, Any]], path: Path,
               resources: Any, say: Callable[[str], None], shown: Sequence[str] = ("val_loss",), done: int = 0,
               scratch: Optional[Path] = None) -> None:
    """Train `runs` through the search's Ray trial runner, adding each record to `results` and appending it to
    `path` as it ends (`done` runs counted as ended before)."""
    from .jobs import run_jobs

    by_name = {run.name: run for run in runs}
    total = done + len(runs)
    cut_short = path.is_file() and path.read_bytes()[-1:] not in (b"", b"\n")
    with path.open("a") as log:
        if cut_short:
            log.write("\n")  # end the line a kill cut short, so that the next record starts a line of its own

        def ended(job: Job, record: dict[str, Any]) -> None:
            nonlocal done
            run = by_name[job.name]
            record.update(run=run.name, config=run.config.index, seed=run.seed, tokens=run.tokens)
            log.write(json.dumps(record, default=str) + "\n")
            log.flush()
            results[run.name] = record
            done += 1
            say(f"[{done}/{total}] {run.describe()}: " + (
                ", ".join(f"{m} {record[m]:.4g}" for m in shown if m in record) + f" ({record['seconds']:.1f} s)"
                if is_measured(record) else f"failed ({outcome_of(record).kind.name}): {record.get('message', '')}"))

        run_jobs(space, [run.job() for run in runs], resources, ended, scratch)


def calibrate(space: SearchSpace, configs: int = 12, mult: int = 4, out: Optional[Path] = None,
              address: Optional[str] = None, gpus_per_trial: Optional[float] = None,
              concurrency: Optional[int] = None, say: Callable[[str], None] = print) -> Calibration:
    """Run (or resume) a calibration of `space` in `out` (default runs/<name>-calibrate) and write its tables and
    plot; returns it. Raises UsageError for bad input before anything is written; KeyboardInterrupt (Ctrl-C,
    SIGTERM) keeps every run that ended."""
    from .calibration_report import write_outputs
    from .cluster import check_address, plan_resources, ray_session
    from .data import load_corpus
    from .run import TUNE_SCRATCH, run_folder, signals_as_interrupts

    if configs < 3:
        raise UsageError(f"--configs: expected at least 3 configs to rank, got {configs}")
    if mult < 2:
        raise UsageError(f"--mult: expected a whole multiple of the budget of 2 or more, got {mult}")
    out = Path(out or Path("runs") / f"{space.name}-calibrate").resolve()
    check_address(address)
    corpus = load_corpus(space.data)
    calibration = Calibration(space, sample_configs(space, corpus.vocab_size, configs), mult, out)
    results = out / RESULTS_FILE
    with run_folder(out, lambda: results.is_file() and results.stat().st_size > 0, results), signals_as_interrupts():
        calibration.results = read_results(results)
        missing = calibration.missing()
        budget = calibration.configs[0].tokens
        say(f"calibrating '{space.name}': {plural(len(calibration.configs), 'config')} x (2 seeds at {budget:,} tokens "
            f"+ 1 at {mult}x, {budget * mult:,}, on a third seed) = {len(calibration.runs())} runs; folder {out}")
        if missing:
            if len(missing) < len(calibration.runs()):
                say(f"resuming: {len(calibration.runs()) - len(missing)} runs kept")
            with ray_session(address, out):
                resources = plan_resources(space, gpus_per_trial, concurrency)
                say(f"{plural(resources.concurrency, 'run')} at a time, each {resources.cpus_per_trial:g} CPU + "
                    f"{resources.gpus_per_trial:g} GPU")
                train_runs(space, missing, calibration.results, results, resources, say, calibration.objectives(),
                           done=len(calibration.runs()) - len(missing), scratch=out / TUNE_SCRATCH)
        else:
            say("every run is measured already")
        write_outputs(calibration)
    return calibration
