"""A whole search as one call: the run folder and its lock, the study and its storage, resume bookkeeping, Ray,
and the outputs written at the end. The command line and the benchmarks call `search`.

The study is the truth. A driver marks dead only what is really dead: when it holds the lock of the folder that
holds its study, every RUNNING trial it finds was left by a killed search; in a study shared through --storage,
only trials whose heartbeat stopped (Optuna's RDB heartbeat) are failed, never another live driver's.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import optuna

from .errors import SpaceError, UsageError
from .progress import plural
from .space import SearchSpace, load_space
from .study import STUDY_FILE, default_storage
from .studyfile import file_of

TUNE_SCRATCH = ".tune"  # Ray Tune's own records inside a run folder, deleted when its trials are done
RUNG_CHECKPOINTS = "checkpoints"  # trials' state at their last rung (multi-fidelity), where a resumed search goes on
RUN_LOCK = ".lock"  # held by the search running in a folder (the OS lets go when it dies, even by SIGKILL)
RUN_OUTPUTS = ("trials.csv", "front.csv", "front.png", "front_hypervolume.png", "report.html", "best.yaml")


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, Slurm, Kubernetes): stopped like Ctrl-C, exit 143."""


@dataclass
class SearchResult:
    study: optuna.Study
    out_dir: Path
    budget: int
    measured: int
    stop_reason: Optional[str] = None  # why it stopped short of the budget, in a sentence
    stopped_by: Optional[int] = None  # the signal that interrupted it (SIGINT or SIGTERM)
    ran: bool = False  # whether this call ran any trial (or found one to mark interrupted)
    written: list[Path] = field(default_factory=list)


def search(space: Union[SearchSpace, str, Path], trials: Optional[int] = None, tokens: Optional[float] = None,
           out: Optional[Union[str, Path]] = None,
           storage: Optional[str] = None, address: Optional[str] = None, gpus_per_trial: Optional[float] = None,
           concurrency: Optional[int] = None, sampler: Optional[str] = None, seed: Optional[int] = None,
           fresh: bool = False, verbosity: int = 1) -> SearchResult:
    """Search `space` until its study holds `trials` measured configs (default: the space's search.trials), or its
    measured configs spent `tokens` training tokens if that comes first (a compute budget), resuming
    whatever the run folder `out` (default runs/<name>) already holds. Raises SpaceError or UsageError for bad
    input, before anything is written; Ctrl-C and SIGTERM return a result with `stopped_by` set."""
    from . import orchestrate
    from .candidate import check_buildable
    from .data import load_corpus

    space = space if isinstance(space, SearchSpace) else load_space(space)
    budget = space.search["trials"] if trials is None else trials
    if budget < 1:
        raise UsageError(f"--trials: expected a positive count, got {budget}")
    if tokens is not None and not tokens > 0:
        raise UsageError(f"--tokens: expected a positive count of training tokens, got {tokens:g}")
    if gpus_per_trial is not None and not 0 <= gpus_per_trial <= 64:
        raise UsageError(f"--gpus-per-trial: expected a fraction such as 0.25 or a count, got {gpus_per_trial}")
    if concurrency is not None and concurrency < 1:
        raise UsageError(f"--concurrency: expected a positive count, got {concurrency}")
    out_dir = Path(out or Path("runs") / space.name)
    orchestrate.check_address(address)
    corpus = load_corpus(space.data)
    check_buildable(space, corpus.vocab_size)  # a space that builds nothing is refused before a folder exists
    url = storage or default_storage(out_dir)
    say = print if verbosity > 0 else (lambda *a, **k: None)

    from .study import close_storage, measured, open_storage

    owns_study = url == default_storage(out_dir)  # no other driver can be using a study in the folder it holds
    with run_folder(out_dir, lambda: _holds_trials(url), out_dir / STUDY_FILE), signals_as_interrupts():
        rdb = storage_call(url, lambda: open_storage(url, writer=True))
        try:
            study = storage_call(url, lambda: _open(space, rdb, fresh, out_dir))
            result = SearchResult(study, out_dir, budget, 0)
            before = _states(study)
            try:
                result.stop_reason = _search(space, study, corpus.vocab_size, url, out_dir, budget, tokens, owns_study,
                                             address, gpus_per_trial, concurrency, sampler, seed, verbosity, say)
            except KeyboardInterrupt as interrupt:  # Ray Tune may raise its own KeyboardInterrupt on the way out
                result.stopped_by = signal.SIGTERM if isinstance(interrupt, Terminated) else stopped_by()
            result.measured = len(measured(study))
            result.ran = _states(study) != before
            if result.ran or not all((out_dir / name).exists() for name in ("trials.csv", "report.html")):
                result.written = write_outputs(study, out_dir)  # a re-run with nothing to do writes nothing
            return result
        finally:
            close_storage(rdb)


def _states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def _open(space: SearchSpace, storage: optuna.storages.BaseStorage, fresh: bool, out_dir: Path) -> optuna.Study:
    from .study import open_study

    if fresh:
        delete_run(out_dir, storage, space.name)
    return open_study(space, storage)


def _search(space: SearchSpace, study: optuna.Study, vocab_size: int, url: str, out_dir: Path, budget: int,
            tokens: Optional[float], owns_study: bool, address: Optional[str], gpus_per_trial: Optional[float], concurrency: Optional[int],
            sampler: Optional[str], seed: Optional[int], verbosity: int, say: Callable[..., None]) -> Optional[str]:
    """Resume bookkeeping, then the trials still owed through Ray; returns why it stopped short, if it did."""
    from . import orchestrate
    from .progress import Progress
    from .study import MAX_REPEATS, make_sampler, mark_interrupted, mark_stale, measured

    # A resumed search must not replay the first session's random draws: the seed moves with the trial count.
    seed = space.search["seed"] if seed is None else seed
    sampler = sampler or space.search["sampler"]
    study.sampler = make_sampler(space, sampler, seed + len(study.trials), budget)
    scheduler = space.describe_scheduler()
    for key, value in (("sampler", sampler), ("scheduler", scheduler), ("trials", budget),
                       ("train_tokens", space.train["tokens"]), ("confirm_seeds", space.search["confirm_seeds"])):
        if study.user_attrs.get(key) != value:  # the settings the report shows
            study.set_user_attr(key, value)
    interrupted = mark_interrupted(study) if owns_study else mark_stale(study)
    done = len(measured(study))
    size = space.size()
    say(f"space '{space.name}' ({f'{size:,} configs' if size else 'continuous'}), validation "
        f"{space.train['eval_tokens']:,} tokens in windows of {space.train['eval_seq_len']}")
    say(f"run folder {out_dir}, study {url}")
    if done or interrupted:
        say(f"resuming: {plural(done, 'measured trial')} kept"
            + (f", {plural(interrupted, 'interrupted trial')} marked failed and owed again" if interrupted else ""))
    spent = sum(t.user_attrs.get("tokens_spent") or 0 for t in measured(study))
    if done >= budget or (tokens is not None and spent >= tokens):
        say(f"the study already has {plural(done, 'measured trial')} (asked for {budget}"
            + (f" or {tokens:,.0f} training tokens; they spent {spent:,}" if tokens is not None else "") + "): nothing to run")
        return None
    with ray_session(address):
        resources = orchestrate.plan_resources(space, gpus_per_trial, concurrency)
        cluster = orchestrate.describe_cluster()
        say(f"Ray: {cluster['nodes']} node(s), {cluster['cpus']:g} CPUs, {cluster['gpus']:g} GPUs; "
            f"{plural(resources.concurrency, 'trial')} at a time, each {resources.cpus_per_trial:g} CPU + {resources.gpus_per_trial:g} GPU")
        say(f"running {plural(budget - done, 'trial')} of {budget}"
            + (f" or until {tokens:,.0f} training tokens are spent" if tokens is not None else "") + ", objectives: "
            + ", ".join(f"{m} ({d})" for m, d in space.objectives.items()))
        if len(space.rungs()) > 1:
            say(f"scheduler {scheduler}")
        progress = Progress(budget, done, list(space.objectives), verbosity)
        checkpoints = out_dir / RUNG_CHECKPOINTS
        drawing = orchestrate.Drawing(space.search["draw_processes"], url, sampler, seed + len(study.trials) + 1)
        searcher = orchestrate.run_trials(space, study, vocab_size, budget, resources, progress,
                                          scratch=out_dir / TUNE_SCRATCH, shared=not owns_study, checkpoints=checkpoints,
                                          token_budget=None if tokens is None else int(tokens), drawing=drawing)
        with contextlib.suppress(OSError):
            checkpoints.rmdir()  # empty once every trial has ended
    if searcher.stop_reason == "exhausted":
        say(f"stopped early: the sampler proposed only settled configs {MAX_REPEATS} times in a row "
            f"(the space looks exhausted at {plural(len(measured(study)), 'measured trial')})")
    elif searcher.stop_reason == "refused":
        reason, count = searcher.streak.refusals.most_common(1)[0]
        return (f"stopped: the last {sum(searcher.streak.refusals.values())} candidates were all refused before training, "
                f"{count} of them for {reason}; see `configaformer-search trials {out_dir}`")
    return None


_terminated = threading.Event()  # set by the SIGTERM handler: the interrupt that follows was a SIGTERM


def _terminate(signum: int, frame: Any) -> None:
    _terminated.set()
    raise Terminated()


def stopped_by() -> int:
    """The signal behind the KeyboardInterrupt being handled: SIGTERM if the handler saw one, else SIGINT."""
    return signal.SIGTERM if _terminated.is_set() else signal.SIGINT


@contextlib.contextmanager
def ray_session(address: Optional[str]) -> Iterator[None]:
    """Ray joined (or started quietly here) for the duration, with SIGTERM still stopping the command as Ctrl-C
    does; a Ray started here is shut down afterwards."""
    from . import orchestrate

    started = orchestrate.connect(address)
    signal.signal(signal.SIGTERM, _terminate)  # ray.init installs its own handler, which exits at once
    try:
        yield
    finally:
        if started:
            import ray

            ray.shutdown()


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """SIGTERM raises Terminated (a KeyboardInterrupt) for the duration, so that it stops a search as Ctrl-C does."""
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
    try:
        return any(s.n_trials for s in optuna.study.get_all_study_summaries(url))
    except Exception:  # an unreadable or half-created storage holds nothing worth keeping
        return False


def storage_call(url: str, call: Callable[[], Any]) -> Any:
    """Run a storage call; a bad, unreachable, damaged, locked, read-only or full storage becomes one line naming
    it and what to do (UsageError)."""
    try:
        return call()
    except SpaceError:
        raise  # the space and the stored study disagree: not the storage's fault
    except (ValueError, ImportError) as err:  # Optuna's errors for malformed URLs and missing drivers
        raise UsageError(f"--storage {url}: {_first_line(err)}") from None
    except Exception as err:
        fault = storage_fault(url, err)
        if fault is None:
            raise
        raise fault from None


def storage_fault(url: str, err: BaseException) -> Optional[UsageError]:
    """The one-line error for a storage failure (Optuna's StorageInternalError wraps sqlalchemy's; a review reads with
    sqlite3's), or None when `err` is not one."""
    while err is not None and not (isinstance(err, optuna.exceptions.StorageInternalError)
                                   or type(err).__module__.startswith(("sqlalchemy", "sqlite3"))):
        err = err.__cause__ or err.__context__  # Ray Tune may wrap what the searcher raised
    if err is None:
        return None
    cause = err.__cause__ or err.__context__ or err
    text = f"{_first_line(err)} {_first_line(cause)}".lower()
    if type(err).__name__ in ("NoSuchModuleError", "ArgumentError"):  # the URL itself is wrong
        return UsageError(f"--storage {url}: {_first_line(err)}")
    where = str(file_of(url) or url)
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        advice = "the file is damaged: restore it from a backup, or start over with --fresh or another --out"
    elif "readonly" in text or "read-only" in text:
        advice = "the storage is read-only: make it writable, or copy the run folder somewhere writable"
    elif "disk is full" in text or "disk full" in text or "no space" in text:
        advice = "the disk is full: free some space and run the same command again"
    elif "locked" in text:
        advice = "the database stayed locked: another process holds it; try again when it is done"
    else:
        advice = _first_line(cause)
    return UsageError(f"{where}: the study storage failed ({advice})")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def delete_run(out_dir: Path, storage: Union[str, optuna.storages.BaseStorage], study_name: str) -> None:
    """Delete a space's study and the run folder's outputs (--fresh)."""
    try:
        optuna.delete_study(study_name=study_name, storage=storage)
    except KeyError:
        pass  # nothing to delete
    for name in RUN_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)


def write_outputs(study: optuna.Study, out_dir: Path) -> list[Path]:
    """The run folder's tables, plots, report and default export; a run output this call did not write (another
    space's winner where this front is empty, say) is removed."""
    from .export import export_trial, write_tables
    from .front import pick_default
    from .plots import plot_review
    from .report import write_report
    from .review import build_review

    review = build_review(study)
    written = write_tables(study, out_dir)
    if review.complete:
        written += plot_review(review, out_dir / "front.png")
    written.append(write_report(study, review, out_dir / "report.html"))
    if review.front:
        written.append(export_trial(study, pick_default(study), out_dir / "best.yaml"))
    for stale in {out_dir / name for name in RUN_OUTPUTS} - set(written):
        stale.unlink(missing_ok=True)
    return written
