"""Corpora for brief training: the embedded default, a text file, or a uint16 token file; train/val split;
random training windows and one fixed set of validation windows, the same for every trial whatever its own
sequence length and batch size."""

from __future__ import annotations

import functools
import hashlib
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
VAL_BUCKETS = 10  # packages whose name hashes to bucket 0 of 10 are validation: about 10%, fixed by the name
EVAL_BATCH_TOKENS = 8192  # validation windows are scored in batches of about this many tokens, for every trial


@dataclass(frozen=True)
class Corpus:
    """Token ids for training and validation; `is_bytes` when each token is one byte (so bpb = nats / ln 2)."""

    train: torch.Tensor
    val: torch.Tensor
    vocab_size: int
    is_bytes: bool
    description: str


def stdlib_files() -> list[Path]:
    """The standard library's own .py files (tests and installed packages left out), in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [p for p in sorted(root.rglob("*.py")) if not EXCLUDED_DIRS & set(p.relative_to(root).parts)]


@functools.lru_cache(maxsize=4)
def embedded_corpus(max_bytes: Optional[int] = None) -> Corpus:
    """The default corpus: this Python's standard library source, as bytes, split into train/val by top-level module
    or package, so that the near-copies inside a package (the codec tables of encodings/, say) stay on one side."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, val, total = [], [], 0
    for path in stdlib_files():
        data = path.read_bytes()
        bucket = zlib.crc32(path.relative_to(root).parts[0].encode()) % VAL_BUCKETS
        (val if bucket == 0 else train).append(data)
        total += len(data)
        if max_bytes and total >= max_bytes:
            break
    as_tensor = lambda chunks: torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)  # noqa: E731
    return Corpus(as_tensor(train), as_tensor(val), 256, True, f"Python {sysconfig.get_python_version()} stdlib source ({total / 1e6:.1f} MB)")


@functools.lru_cache(maxsize=4)
def text_corpus(path: str, val_fraction: float) -> Corpus:
    """Any text file read as bytes (vocab 256); the last val_fraction is validation."""
    data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
    cut = int(len(data) * (1 - val_fraction))
    return Corpus(data[:cut], data[cut:], 256, True, f"{path} ({len(data) / 1e6:.1f} MB of text)")


@functools.lru_cache(maxsize=4)
def token_corpus(path: str, vocab_size: int, val_fraction: float) -> Corpus:
    """A nanoGPT-style file of uint16 token ids; the last val_fraction is validation."""
    ids = torch.from_numpy(np.fromfile(path, dtype=np.uint16).astype(np.int32))
    cut = int(len(ids) * (1 - val_fraction))
    return Corpus(ids[:cut], ids[cut:], vocab_size, False, f"{path} ({len(ids):,} tokens)")


def load_corpus(data: dict) -> Corpus:
    """The corpus a space's `data` section names."""
    if data["source"] == "text":
        return text_corpus(data["path"], data["val_fraction"])
    if data["source"] == "tokens":
        return token_corpus(data["path"], data["vocab_size"], data["val_fraction"])
    return embedded_corpus(data["max_bytes"])


def _window_block(tokens: torch.Tensor, starts: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[len(starts), seq_len + 1] token ids: each window and the token after it."""
    return tokens[starts[:, None] + torch.arange(seq_len + 1)].long()


def train_batch(corpus: Corpus, batch_size: int, seq_len: int, seed: int, step: int,
                device: torch.device = torch.device("cpu")) -> tuple[torch.Tensor, torch.Tensor]:
    """The (inputs, targets) windows of training step `step`: a pure function of the seed and the step, so that a
    run resumed or branched at any step sees the batches a straight run would.

    On CUDA the batch travels in one asynchronous copy from pinned memory; a copy from pageable memory would make
    the host wait at every step until the GPU has drained its queue.
    """
    if len(corpus.train) <= seq_len + 1:
        raise ValueError(f"the training text ({len(corpus.train)} tokens) is shorter than one window of {seq_len + 1}")
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(corpus.train) - seq_len - 1, (batch_size,), generator=generator)
    block = _window_block(corpus.train, starts, seq_len)
    if device.type == "cuda":
        block = block.pin_memory().to(device, non_blocking=True)
    return block[:, :-1], block[:, 1:]


@dataclass(frozen=True)
class ValSet:
    """The fixed validation windows and a fingerprint of exactly what they score (recorded with every trial)."""

    batches: list[tuple[torch.Tensor, torch.Tensor]]
    fingerprint: str


def val_set(corpus: Corpus, seq_len: int, tokens: int) -> ValSet:
    """About `tokens` target tokens in windows of `seq_len` spread evenly over the held-out text, scored in batches
    of a fixed size: the same set for every trial that gives the same seq_len and tokens."""
    if len(corpus.val) <= seq_len + 1:
        raise ValueError(f"the validation text ({len(corpus.val)} tokens) is shorter than one window of {seq_len + 1}")
    starts = torch.linspace(0, len(corpus.val) - seq_len - 1, max(1, tokens // seq_len)).long()
    block = _window_block(corpus.val, starts, seq_len)
    fingerprint = hashlib.sha256(block.numpy().tobytes()).hexdigest()[:16]
    batch = max(1, EVAL_BATCH_TOKENS // seq_len)
    return ValSet([(rows[:, :-1], rows[:, 1:]) for rows in block.split(batch)], f"{fingerprint}:{len(starts)}x{seq_len}")


def near_copy_share(corpus: Corpus, window: int = 64, stretch: int = 4096) -> float:
    """The share of validation tokens in `stretch`-long runs at least half of whose `window`-long windows occur
    verbatim in the training text: how much of the validation set a model could have memorised."""
    def window_hashes(tokens: torch.Tensor) -> np.ndarray:
        data = np.ascontiguousarray(tokens.numpy().astype(np.uint8 if corpus.is_bytes else np.uint16)).view(np.uint8)
        step, width = data.itemsize, window * data.itemsize
        count = (len(data) - width) // step + 1
        words = np.ndarray((len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))  # 8 bytes at every offset
        hashes = np.zeros(count, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for offset in range(0, width, 8):  # a polynomial hash of the window's 8-byte words, mod 2**64
                hashes = hashes * np.uint64(0x100000001B3) + words[offset : offset + count * step : step]
        return hashes

    seen, probes = np.sort(window_hashes(corpus.train)), window_hashes(corpus.val)
    hits = seen[np.minimum(np.searchsorted(seen, probes), len(seen) - 1)] == probes  # np.isin sorts far slower
    runs = len(hits) // stretch
    if runs == 0:
        return 0.0
    copied = hits[: runs * stretch].reshape(runs, stretch).mean(axis=1) >= 0.5
    return float(copied.sum() * stretch / len(corpus.val))
