"""Corpora for brief training: the embedded default, a text file, or a uint16 token file; train/val split;
random training windows and one fixed set of validation windows, the same for every trial."""

from __future__ import annotations

import functools
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

EXCLUDED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"}
VAL_BUCKETS = 10  # files whose path hashes to bucket 0 of 10 are validation: about 10%, fixed by the path


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
    """The default corpus: this Python's standard library source, as bytes, split into train/val by file."""
    root = Path(sysconfig.get_paths()["stdlib"])
    train, val, total = [], [], 0
    for path in stdlib_files():
        data = path.read_bytes()
        bucket = zlib.crc32(str(path.relative_to(root)).encode()) % VAL_BUCKETS
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


def _windows(tokens: torch.Tensor, starts: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    block = _window_block(tokens, starts, seq_len)
    return block[:, :-1], block[:, 1:]


def train_batches(corpus: Corpus, batch_size: int, seq_len: int, seed: int,
                  device: torch.device = torch.device("cpu")) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (inputs, targets) batches of random training windows on `device`, reproducible from the seed.

    On CUDA each batch travels in one asynchronous copy from pinned memory; a copy from pageable memory would make
    the host wait at every step until the GPU has drained its queue.
    """
    if len(corpus.train) <= seq_len + 1:
        raise ValueError(f"the training text ({len(corpus.train)} tokens) is shorter than one window of {seq_len + 1}")
    generator = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(corpus.train) - seq_len - 1, (batch_size,), generator=generator)
        block = _window_block(corpus.train, starts, seq_len)
        if device.type == "cuda":
            block = block.pin_memory().to(device, non_blocking=True)
        yield block[:, :-1], block[:, 1:]


def val_batches(corpus: Corpus, batch_size: int, seq_len: int, tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fixed validation set: about `tokens` tokens in windows spread evenly over the held-out text."""
    count = max(1, tokens // seq_len)
    if len(corpus.val) <= seq_len + 1:
        raise ValueError(f"the validation text ({len(corpus.val)} tokens) is shorter than one window of {seq_len + 1}")
    starts = torch.linspace(0, len(corpus.val) - seq_len - 1, count).long()
    return [_windows(corpus.val, chunk, seq_len) for chunk in starts.split(batch_size)]
