"""The device gate (devicegate.py) on every device, the CPU included: one gate per process and device, a probe inside
a trial's own training steps aside for itself, trainers in other processes step aside while a probe has the device,
short work delays a probe until it ends, and each device (a physical GPU, under any CUDA_VISIBLE_DEVICES) has lock
files of its own. A whole trial with latency and decode probes runs the GPU path's gate code on the CPU. The CUDA
kernels and a trial on a GPU are checked where there is one."""

import multiprocessing
import tempfile
import threading
import time

import pytest
import torch
from helpers import TINY_SPACE, write_space

from configaformer import ConfigaFormer
from configaformer_search import trial
from configaformer_search.devicegate import DeviceGate, device_name
from configaformer_search.probes.timing import MAX_ROUNDS, Timing
from configaformer_search.space import load_space

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
STEP_S = 0.002  # a trainer's step in these tests: short, and kind to two shared cores


@pytest.fixture(autouse=True)
def _own_lock_folder(tmp_path, monkeypatch):
    """Lock files in this test's folder: the gates of other processes on this machine (other test runs, searches)
    neither delay these tests nor are delayed by them."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield
    DeviceGate._gates.clear()


def finishes(work, timeout: float = 30.0):
    """`work()`'s result, run in a thread so that a gate waiting on itself fails the test instead of hanging it."""
    result, errors = [], []

    def run():
        try:
            result.append(work())
        except BaseException as err:  # surfaced below
            errors.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still waiting after {timeout} s: the gate waits on itself"
    if errors:
        raise errors[0]
    return result[0]


def wait_until(condition, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# -- one process ---------------------------------------------------------------------------------------------------

def test_a_probe_inside_its_own_training_steps_aside_for_itself(tmp_path):
    def train_then_probe():  # as a trial's code does: the gate looked up again wherever it is used
        gate = DeviceGate.of("cpu")
        with DeviceGate.of("cpu").sharing() as checkpoint:
            checkpoint()
            with DeviceGate.of(torch.device("cpu")).exclusive():  # used to wait on its own shared lock forever
                inside = True
            checkpoint()
            with gate.shared():  # short work inside training, and a probe inside that
                with gate.exclusive():
                    pass
            checkpoint()
        with gate.shared():
            with gate.exclusive():
                pass
        with gate.exclusive():  # and alone, after training ended
            pass
        return inside

    assert finishes(train_then_probe, timeout=20)
    assert DeviceGate.of("cpu") is DeviceGate.of(torch.device("cpu")) is DeviceGate.cpu()  # one per process and device
    assert (tmp_path / "configaformer-cpu-use.lock").is_file()


def test_a_whole_trial_with_latency_and_decode_probes_runs_the_gate_on_the_cpu(tmp_path):
    text = TINY_SPACE.replace("objectives: {val_loss: min, peak_mem_mb: min, latency_ms: min}",
                              "objectives: {val_loss: min, kv_cache_mb: min, decode_ms: min}")
    text = text.replace("probes: {latency_repeats: 5, latency_warmup: 1}",
                        "probes: {latency: true, memory: false, latency_repeats: 5, latency_warmup: 1, batch_size: 2, "
                        "decode_context: 40}")
    space = load_space(write_space(tmp_path, text.replace("tokens: 49152", "tokens: 4096")))
    record = finishes(lambda: trial.run(space, {"width": 32, "heads": 2, "position": "rope", "dim_rope": 4}, "cpu"), 120)
    assert record["status"] == "ok", record
    for name in ("latency", "decode", "prefill"):
        assert record[f"{name}_ms"] > 0 and record[f"{name}_cv"] >= 0, name
        assert 1 <= record[f"{name}_rounds"] <= MAX_ROUNDS and isinstance(record[f"{name}_noisy"], bool), name
    assert record["kv_cache_mb"] > 0 and set(record["timings"]) >= {"train_s", "probe_s"}
    assert (tmp_path / "configaformer-cpu-gate.lock").is_file()  # the CPU's gate it went through


def test_a_trainer_thread_steps_aside_for_a_probe_thread_of_its_process():
    steps, stop, started = [0], threading.Event(), threading.Event()

    def trainer():  # each thread looks its gate up: its own lock files, which lock apart from the other thread's
        with DeviceGate.of("cpu").sharing() as checkpoint:
            while not stop.is_set():
                checkpoint()
                time.sleep(STEP_S)
                steps[0] += 1
                started.set()

    thread = threading.Thread(target=trainer, daemon=True)
    thread.start()
    try:
        started.wait(10)

        def probe():
            with DeviceGate.of("cpu").exclusive():
                before = steps[0]
                time.sleep(0.3)
                return steps[0] - before

        assert finishes(probe) == 0
    finally:
        stop.set()
        thread.join(10)


# -- several processes ---------------------------------------------------------------------------------------------

def _fresh_gate(device: str) -> DeviceGate:
    """This process's gate, as a process that was started (Ray's workers are), not forked with its parent's."""
    DeviceGate._gates.clear()
    return DeviceGate.of(device)


def _train(folder: str, device: str, steps, stop) -> None:
    tempfile.tempdir = folder
    with _fresh_gate(device).sharing() as checkpoint:
        while not stop.is_set():
            checkpoint()
            time.sleep(STEP_S)
            with steps.get_lock():
                steps.value += 1


def _short_work(folder: str, inside, seconds: float) -> None:
    tempfile.tempdir = folder
    with _fresh_gate("cpu").shared():
        inside.value = 1
        time.sleep(seconds)
        inside.value = 2  # done; the gate is let go right after


def _process(context, target, *args):
    process = context.Process(target=target, args=args, daemon=True)
    process.start()
    return process


@pytest.fixture
def context():
    return multiprocessing.get_context("fork")  # CPU only: nothing here runs torch in the children


def test_a_trainer_in_another_process_steps_aside_while_a_probe_has_the_device(tmp_path, context):
    steps, stop = context.Value("l", 0), context.Event()
    trainer = _process(context, _train, str(tmp_path), "cpu", steps, stop)
    try:
        wait_until(lambda: steps.value > 20, what="the trainer to train")

        def probe():
            with DeviceGate.of("cpu").exclusive():
                before = steps.value
                time.sleep(0.5)
                return steps.value - before

        assert finishes(probe) == 0  # no step while the probe held the device
        resumed = steps.value
        wait_until(lambda: steps.value > resumed + 20, what="the trainer to carry on")
    finally:
        stop.set()
        trainer.join(10)
    assert trainer.exitcode == 0


def test_a_probe_inside_one_trainer_pauses_the_other_trainers(tmp_path, context):
    """Two trials packed on one device: one probes inside its training; the other pauses meanwhile, and both go
    on afterwards."""
    steps, stop = context.Value("l", 0), context.Event()
    other = _process(context, _train, str(tmp_path), "cpu", steps, stop)
    try:
        wait_until(lambda: steps.value > 20, what="the other trainer to train")

        def train_and_probe():
            with DeviceGate.of("cpu").sharing() as checkpoint:
                for _ in range(20):
                    checkpoint()
                    time.sleep(STEP_S)
                with DeviceGate.of("cpu").exclusive():
                    before = steps.value
                    time.sleep(0.4)
                    paused = steps.value - before
                for _ in range(20):
                    checkpoint()
                    time.sleep(STEP_S)
                return paused

        assert finishes(train_and_probe) == 0
        resumed = steps.value
        wait_until(lambda: steps.value > resumed + 20, what="the other trainer to carry on")
    finally:
        stop.set()
        other.join(10)
    assert other.exitcode == 0


def test_short_work_delays_a_probe_until_it_ends_and_none_starts_during_one(tmp_path, context):
    inside = context.Value("i", 0)
    worker = _process(context, _short_work, str(tmp_path), inside, 1.0)
    wait_until(lambda: inside.value == 1, what="the short work to start")
    started = time.monotonic()

    def probe():
        with DeviceGate.of("cpu").exclusive():
            return inside.value, time.monotonic() - started

    seen, waited = finishes(probe)
    assert seen == 2 and waited > 0.3  # the probe began only once the work had ended
    worker.join(10)

    inside.value = 0
    gate = DeviceGate.of("cpu")
    with gate.exclusive():
        late = _process(context, _short_work, str(tmp_path), inside, 0.0)
        time.sleep(0.5)
        assert inside.value == 0  # new work waits while the probe has the device
    wait_until(lambda: inside.value == 2, what="the work to run once the probe ended")
    late.join(10)
    assert worker.exitcode == late.exitcode == 0


def _probe_when_asked(folder: str, asked, got) -> None:
    tempfile.tempdir = folder
    if asked.wait(60):
        with _fresh_gate("cpu").exclusive():
            got.value = 1


def test_a_trial_waiting_in_its_report_does_not_hold_the_device(tmp_path, context):
    asked, got = context.Event(), context.Value("i", 0)
    prober = _process(context, _probe_when_asked, str(tmp_path), asked, got)
    seen = []

    def report(record):  # what Ray's tune.report does: wait until the driver takes the result
        if not seen:
            asked.set()
            deadline = time.monotonic() + 2
            while not got.value and time.monotonic() < deadline:
                time.sleep(0.01)
            seen.append(got.value)
        return True

    text = TINY_SPACE.replace("tokens: 49152", "tokens: 4096").replace("eval_tokens: 4096", "eval_tokens: 1024")
    text = text.replace("probes: {latency_repeats: 5, latency_warmup: 1}", "probes: {memory: false, latency_repeats: 3, latency_warmup: 1}")
    space = load_space(write_space(tmp_path, text))
    try:
        record = finishes(lambda: trial.run(space, {"width": 32, "heads": 2, "position": "rope", "dim_rope": 4}, "cpu",
                                            report), 120)
    finally:
        asked.set()
        prober.join(30)
    assert record["status"] == "ok" and got.value == 1  # the probe did get the device, once the trial ended
    assert seen == [1]  # and while the trial waited in its report, not only after it


# -- which device ------------------------------------------------------------------------------------------------

def test_each_device_has_lock_files_of_its_own(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_name(torch.device("cpu")) == "cpu"
    assert device_name(torch.device("cuda")) == "cuda0" and device_name(torch.device("cuda", 2)) == "cuda2"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # a Ray worker sees its physical GPUs renumbered from 0
    assert device_name(torch.device("cuda", 0)) == "cuda3" and device_name(torch.device("cuda", 1)) == "cuda5"
    assert device_name(torch.device("cuda")) == "cuda3"
    assert device_name(torch.device("cpu")) == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    assert device_name(torch.device("cuda", 0)) == "cuda7"

    seen_as_0 = DeviceGate.of(torch.device("cuda", 0))  # physical GPU 7 in this process
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert DeviceGate.of(torch.device("cuda", 7)) is seen_as_0  # the same GPU seen without renumbering: one gate
    other_gpu = DeviceGate.of(torch.device("cuda", 1))
    cpu = DeviceGate.of("cpu")
    assert len({id(seen_as_0), id(other_gpu), id(cpu)}) == 3
    assert sorted(p.name for p in tmp_path.glob("configaformer-*.lock")) == [
        "configaformer-cpu-gate.lock", "configaformer-cpu-use.lock", "configaformer-cuda1-gate.lock",
        "configaformer-cuda1-use.lock", "configaformer-cuda7-gate.lock", "configaformer-cuda7-use.lock"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert DeviceGate.of("cpu", elsewhere) is not cpu and (elsewhere / "configaformer-cpu-gate.lock").is_file()


def test_a_probe_on_one_device_does_not_wait_for_a_trainer_on_another(tmp_path, context):
    steps, stop = context.Value("l", 0), context.Event()
    trainer = _process(context, _train, str(tmp_path), "cuda:1", steps, stop)  # its lock files only: no CUDA work
    try:
        wait_until(lambda: steps.value > 20, what="the trainer to train")

        def probe():
            with DeviceGate.of("cpu").exclusive():
                before = steps.value
                time.sleep(0.3)
                return steps.value - before

        assert finishes(probe, timeout=10) > 0  # the other device's trainer carried on
    finally:
        stop.set()
        trainer.join(10)


# -- on a GPU ------------------------------------------------------------------------------------------------------

@cuda
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


@cuda
def test_trial_on_cuda_measures_memory_and_latency(tmp_path):
    space = load_space(write_space(tmp_path))
    metrics = trial.run(space, {"width": 48, "heads": 4, "position": "rope", "dim_rope": 8}, device="cuda")
    assert metrics["status"] == "ok", metrics
    assert metrics["device"] == "cuda" and metrics["peak_mem_source"] == "measured"
    assert metrics["peak_mem_mb"] > 4 * metrics["params"] * 4 / 2**20  # weights, grads and AdamW state, at least
    assert metrics["latency_ms"] > 0 and metrics["val_bpb"] < 6.5
    assert 1 <= metrics["latency_rounds"] <= MAX_ROUNDS and isinstance(metrics["latency_noisy"], bool)


def _train_on_cuda(folder: str, steps, stop) -> None:
    tempfile.tempdir = folder
    x = torch.randn(1024, 1024, device="cuda")
    with DeviceGate.of("cuda").sharing() as checkpoint:
        while not stop.is_set():
            checkpoint()
            x = (x @ x).tanh()
            with steps.get_lock():
                steps.value += 1


@cuda
def test_a_trainer_on_the_gpu_in_another_process_steps_aside_for_a_probe(tmp_path):
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    steps, stop = context.Value("l", 0), context.Event()
    trainer = _process(context, _train_on_cuda, str(tmp_path), steps, stop)
    try:
        wait_until(lambda: steps.value > 20, timeout=120, what="the GPU trainer to train")

        def probe():
            with DeviceGate.of("cuda").exclusive():
                before = steps.value
                time.sleep(0.5)
                return steps.value - before

        assert finishes(probe) == 0
        resumed = steps.value
        wait_until(lambda: steps.value > resumed, what="the GPU trainer to carry on")
    finally:
        stop.set()
        trainer.join(30)


def test_a_device_held_too_long_elsewhere_is_given_up_on_and_the_timing_marked(tmp_path, monkeypatch):
    monkeypatch.setattr(DeviceGate, "WAIT_S", 0.3)
    holder_ready, release = threading.Event(), threading.Event()

    def stuck_probe():  # another thread (its own lock files) that holds the device and does not let go
        with DeviceGate.of("cpu", tmp_path).exclusive():
            holder_ready.set()
            release.wait(10)

    thread = threading.Thread(target=stuck_probe, daemon=True)
    thread.start()
    holder_ready.wait(10)
    try:
        started = time.monotonic()
        with DeviceGate.of("cpu", tmp_path).exclusive() as alone:
            waited = time.monotonic() - started
        assert alone is False and 0.25 < waited < 5  # gave up after WAIT_S and went on
        assert Timing(1.0, 0.01, 1, alone=False).noisy and not Timing(1.0, 0.01, 1).noisy
    finally:
        release.set()
        thread.join(10)
