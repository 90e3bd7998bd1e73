"""A whole search as one call: the run folder and its lock, the study and its storage, resuming, Ray, and the outputs
written at the end. The command line and the benchmarks call `search`.

The study is the truth. A driver fails only what is really dead: when it holds the lock of the folder that holds its
study, every RUNNING trial it finds was left by a killed search; in a study shared through --storage, only trials
whose heartbeat stopped are failed, never another live driver's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import shutil
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from .errors import UsageError
from .progress import plural
from .space import SearchSpace, load_space
from .storage import STUDY_FILE, default_storage
from .storage.faults import storage_call

MIN_GRACE_S = 10.0  # a driver beats at a third of the grace; shorter would take a driver busy for a moment for dead

TUNE_SCRATCH = ".tune"  # Ray Tune's own records inside a run folder, deleted when its trials are done
RUNG_CHECKPOINTS = "checkpoints"  # trials' state at their last rung (multi-fidelity), where a resumed search goes on
RUN_LOCK = ".lock"  # held by the command running in a folder (the OS lets go when it dies, even by SIGKILL)
RUN_OUTPUTS = ("trials.csv", "front.csv", "front.png", "front_hypervolume.png", "report.html", "best.yaml")


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, Slurm, Kubernetes): stopped like Ctrl-C, exit 143."""


@dataclass(frozen=True)
class SearchOptions:
    """How to run a search; every field left None takes the space's own setting."""

    trials: Optional[int] = None  # measured configs to reach (default search.trials)
    tokens: Optional[float] = None  # also stop starting configs once the measured ones spent this many tokens
    out: Optional[Union[str, Path]] = None  # the run folder (default runs/<name>)
    storage: Optional[str] = None  # an RDB URL shared with other drivers (default the run folder's SQLite file)
    address: Optional[str] = None  # a Ray cluster to join (default a local Ray)
    gpus_per_trial: Optional[float] = None
    concurrency: Optional[int] = None
    sampler: Optional[str] = None
    seed: Optional[int] = None
    fresh: bool = False  # delete the space's study and outputs first
    verbosity: int = 1  # 0 quiet, 1 a line per trial, 2 also params and free suggestions
    storage_patience: float = 180.0  # seconds a running search waits for a database server that went away
    heartbeat_grace: Optional[float] = None  # seconds a running trial's heartbeat may be silent (default the store's)

    def check(self) -> None:
        """Refuse bad values by name, before anything is written."""
        if self.trials is not None and self.trials < 1:
            raise UsageError(f"--trials: expected a positive count, got {self.trials}")
        if self.tokens is not None and not self.tokens > 0:
            raise UsageError(f"--tokens: expected a positive count of training tokens, got {self.tokens:g}")
        if self.gpus_per_trial is not None and not 0 <= self.gpus_per_trial <= 64:
            raise UsageError(f"--gpus-per-trial: expected a fraction such as 0.25 or a count, got {self.gpus_per_trial}")
        if self.concurrency is not None and self.concurrency < 1:
            raise UsageError(f"--concurrency: expected a positive count, got {self.concurrency}")
        if not self.storage_patience >= 0:
            raise UsageError(f"--storage-patience: expected seconds >= 0, got {self.storage_patience}")
        if self.heartbeat_grace is not None and not self.heartbeat_grace >= MIN_GRACE_S:
            raise UsageError(f"--heartbeat-grace: expected seconds >= {MIN_GRACE_S}, got {self.heartbeat_grace}")


@dataclass
class SearchResult:
    out_dir: Path
    url: str  # the study's storage
    budget: int
    measured: int
    stop_reason: Optional[str] = None  # why it stopped short of the budget, in a sentence
    stopped_by: Optional[int] = None  # the signal that interrupted it (SIGINT or SIGTERM)
    ran: bool = False  # whether this call ran any trial (or found one to mark interrupted)
    written: list[Path] = field(default_factory=list)

    def review(self) -> Any:
        """The study as the review commands read it."""
        from .review import read_review

        return read_review(self.url)


def search(space: Union[SearchSpace, str, Path], options: Optional[SearchOptions] = None, **settings: Any) -> SearchResult:
    """Search `space` until its study holds `trials` measured configs (or its measured configs spent `tokens`
    training tokens, if that comes first), resuming whatever the run folder (or shared storage) already holds.
    Settings are SearchOptions' fields, given as `options` or as keywords. Raises SpaceError or UsageError for bad
    input, before anything is written; Ctrl-C and SIGTERM return a result with `stopped_by` set."""
    from .candidate import check_buildable
    from .cluster import check_address
    from .data import load_corpus

    options = dataclasses.replace(options or SearchOptions(), **settings)
    options.check()
    space = space if isinstance(space, SearchSpace) else load_space(space)
    budget = space.search["trials"] if options.trials is None else options.trials
    out_dir = Path(options.out or Path("runs") / space.name).resolve()  # Ray runs each trial in a folder of its own
    check_address(options.address)
    corpus = load_corpus(space.data)
    check_buildable(space, corpus.vocab_size)  # a space that builds nothing is refused before a folder exists
    url = options.storage or default_storage(out_dir)
    owns_study = url == default_storage(out_dir)  # no other driver can be using a study in the folder it holds
    result = SearchResult(out_dir, url, budget, 0)
    with run_folder(out_dir, lambda: _holds_trials(url), out_dir / STUDY_FILE), signals_as_interrupts():
        store = storage_call(url, lambda: _open(space, url, options.fresh, out_dir))
        try:
            before = storage_call(url, store.states)
            try:
                result.stop_reason = storage_call(url, lambda: _search(space, store, corpus.vocab_size, out_dir, budget,
                                                                       owns_study, options))
            except KeyboardInterrupt as interrupt:  # Ray Tune may raise its own KeyboardInterrupt on the way out
                result.stopped_by = signal.SIGTERM if isinstance(interrupt, Terminated) else stopped_by()
            result.measured = storage_call(url, lambda: _measured(store))
            result.ran = storage_call(url, store.states) != before
        finally:
            store.close()
        if result.ran or not all((out_dir / name).exists() for name in ("trials.csv", "report.html")):
            result.written = storage_call(url, lambda: write_outputs(url, out_dir))  # a rerun with nothing to do writes nothing
    return result


def _measured(store: Any) -> int:
    """Trials that took a place of the budget and ended."""
    return sum(t.outcome.counts for t in store.trials(states=("COMPLETE", "PRUNED", "FAIL")))


def _open(space: SearchSpace, url: str, fresh: bool, out_dir: Path) -> Any:
    """The space's study in its storage (created, or loaded and checked against the space)."""
    from .storage import StudyStore, open_storage

    storage = open_storage(url)
    if fresh:
        delete_run(out_dir, storage, space.name)
    attrs = {"space": str(Path(space.path).resolve()),
             "objectives": ", ".join(f"{name} {d}" for name, d in space.objectives.items()),
             "space_yaml": Path(space.path).read_text() if Path(space.path).is_file() else ""}
    try:
        return StudyStore.open(storage, space.name, space.objectives, distributions=space.distributions(), attrs=attrs)
    except Exception:
        storage.engine.dispose()
        raise


def _search(space: SearchSpace, store: Any, vocab_size: int, out_dir: Path, budget: int, owns_study: bool,
            options: SearchOptions) -> Optional[str]:
    """Resume bookkeeping, then the trials still owed through Ray; returns why it stopped short, if it did."""
    from .cluster import describe_cluster, plan_resources, ray_session
    from .driver.asking import AskAhead, Drawing
    from .driver.samplers import make_sampler
    from .driver.searcher import Driver
    from .driver.suggestions import MAX_REPEATS
    from .driver.tune import search_on_ray
    from .progress import Progress
    from .storage import Heartbeat
    from .storage.patience import Patience

    say = print if options.verbosity > 0 else (lambda *a, **k: None)
    store.patience = Patience(options.storage_patience, lambda text: print(text, file=sys.stderr, flush=True), store.url)
    if options.heartbeat_grace is not None:
        store.grace_s = options.heartbeat_grace
    seed = space.search["seed"] if options.seed is None else options.seed
    sampler = options.sampler or space.search["sampler"]
    # A resumed search must not replay the first session's random draws: the seed moves with the trial count.
    trials_so_far = len(store.states())
    store.use_sampler(make_sampler(space, sampler, seed + trials_so_far, budget))
    scheduler = space.describe_scheduler()
    settings = {"sampler": sampler, "scheduler": scheduler, "trials": budget, "train_tokens": space.train["tokens"],
                "confirm_seeds": space.search["confirm_seeds"]}
    recorded = store.study_attrs()
    store.set_study_attrs(**{k: v for k, v in settings.items() if recorded.get(k) != v})  # what the report shows
    interrupted = store.fail_running() if owns_study else len(store.fail_stale())
    done = _measured(store)
    size = space.size()
    say(f"space '{space.name}' ({f'{size:,} configs' if size else 'continuous'}), validation "
        f"{space.train['eval_tokens']:,} tokens in windows of {space.train['eval_seq_len']}")
    say(f"run folder {out_dir}, study {store.url}")
    if done or interrupted:
        say(f"resuming: {plural(done, 'measured trial')} kept"
            + (f", {plural(interrupted, 'interrupted trial')} marked failed and owed again" if interrupted else ""))
    tokens = options.tokens
    spent = sum(t.user_attrs.get("tokens_spent") or 0 for t in store.trials(states=("COMPLETE", "PRUNED", "FAIL"))
                if t.outcome.counts)
    if done >= budget or (tokens is not None and spent >= tokens):
        say(f"the study already has {plural(done, 'measured trial')} (asked for {budget}"
            + (f" or {tokens:,.0f} training tokens; they spent {spent:,}" if tokens is not None else "") + "): nothing to run")
        return None
    with ray_session(options.address, out_dir):
        resources = plan_resources(space, options.gpus_per_trial, options.concurrency)
        cluster = describe_cluster()
        say(f"Ray: {cluster['nodes']} node(s), {cluster['cpus']:g} CPUs, {cluster['gpus']:g} GPUs; "
            f"{plural(resources.concurrency, 'trial')} at a time, each {resources.cpus_per_trial:g} CPU + {resources.gpus_per_trial:g} GPU")
        say(f"running {plural(budget - done, 'trial')} of {budget}"
            + (f" or until {tokens:,.0f} training tokens are spent" if tokens is not None else "") + ", objectives: "
            + ", ".join(f"{m} ({d})" for m, d in space.objectives.items()))
        if len(space.rungs()) > 1:
            say(f"scheduler {scheduler}")
        progress = Progress(budget, done, list(space.objectives), options.verbosity)
        checkpoints = out_dir / RUNG_CHECKPOINTS
        driver = Driver(space, store, vocab_size, budget, progress, None if tokens is None else int(tokens), checkpoints)
        drawing = Drawing(space.search["draw_processes"], store.storage.url, sampler, seed + trials_so_far + 1)
        try:
            with Heartbeat(store, driver.alive_ids), AskAhead(driver, max(1, min(4, resources.concurrency // 2)), drawing):
                search_on_ray(driver, resources, out_dir / TUNE_SCRATCH, shared=not owns_study)
        except KeyboardInterrupt:
            driver.interrupt()  # owed again, as after a kill, but known now
            raise
        store.set_study_attrs(**driver.predictions(), **driver.screen_summary())  # with a target: every trial's loss
        # there, as it now stands; with a timing constraint, what the timing screen refused and how well it predicts
        with contextlib.suppress(OSError):
            checkpoints.rmdir()  # empty once every trial has ended
    measured = _measured(store)
    if driver.stop_reason == "exhausted":
        say(f"stopped early: the sampler proposed only settled configs {MAX_REPEATS} times in a row "
            f"(the space looks exhausted at {plural(measured, 'measured trial')})")
    elif driver.stop_reason == "refused":
        total, reason, count = driver.refusals
        return (f"stopped: the last {total} candidates were all refused before training, {count} of them for "
                f"{reason}; see `configaformer-search trials {out_dir}`")
    return None


_terminated = threading.Event()  # set by the SIGTERM handler: the interrupt that follows was a SIGTERM


def _terminate(signum: int, frame: Any) -> None:
    _terminated.set()
    raise Terminated()


def stopped_by() -> int:
    """The signal behind the KeyboardInterrupt being handled: SIGTERM if the handler saw one, else SIGINT."""
    return signal.SIGTERM if _terminated.is_set() else signal.SIGINT


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """SIGTERM raises Terminated (a KeyboardInterrupt) for the duration, so that it stops a command as Ctrl-C does
    (`ray_session` keeps this handler where Ray would install its own)."""
    before = signal.signal(signal.SIGTERM, _terminate)
    _terminated.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def run_folder(out_dir: Path, worth_keeping: Callable[[], bool], main_file: Path) -> Iterator[None]:
    """Create (or reuse) a run folder and hold its lock for the duration. When the work fails (not interrupted)
    before anything is `worth_keeping`, a folder this call created is removed again, and so is its `main_file`
    (the study, say) when this call created it."""
    created = not out_dir.exists()
    new_main_file = not main_file.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        handle = open(out_dir / RUN_LOCK, "w")
    except OSError as err:
        raise UsageError(f"{out_dir}: cannot create the run folder ({err.strerror})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UsageError(f"{out_dir}: another command is running in this folder; wait for it, or use another --out") from None
    try:
        yield
    except BaseException as err:
        if not isinstance(err, KeyboardInterrupt) and not worth_keeping():
            if created:
                shutil.rmtree(out_dir, ignore_errors=True)  # nothing half-done is left behind
            elif new_main_file:
                main_file.unlink(missing_ok=True)
        raise
    finally:
        handle.close()


def _holds_trials(url: str) -> bool:
    from .storage import read_study

    try:
        return bool(read_study(url).trials)
    except Exception:  # an unreadable or half-created storage holds nothing worth keeping
        return False


def delete_run(out_dir: Path, storage: Any, study_name: str) -> None:
    """Delete a space's study and the run folder's outputs (--fresh)."""
    import optuna

    try:
        optuna.delete_study(study_name=study_name, storage=storage)
    except KeyError:
        pass  # nothing to delete
    for name in RUN_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)


def write_outputs(url: str, out_dir: Path) -> list[Path]:
    """The run folder's tables, plots, report and default export; a run output this call did not write (another
    space's winner where this front is empty, say) is removed."""
    from .export import export_trial, write_tables
    from .plots import plot_review
    from .report import write_report
    from .review import read_review

    review = read_review(url)
    written = write_tables(review, out_dir)
    if review.complete:
        written += plot_review(review, out_dir / "front.png")
    written.append(write_report(review, out_dir / "report.html"))
    if review.front:
        written.append(export_trial(review, review.pick_default(), out_dir / "best.yaml"))
    for stale in {out_dir / name for name in RUN_OUTPUTS} - set(written):
        stale.unlink(missing_ok=True)
    return written
