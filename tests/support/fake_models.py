"""Models for tests that need to observe or disturb the worker (loaded by import path, like a user's own model).

`counting`: VADER that appends every text it scores to `$RTAI_TEST_COUNT_DIR/<pid>.txt`, so a test can count model
calls per request across worker processes. `slow`: VADER that sleeps `$RTAI_TEST_SLOW_MS` per batch, so a test can
kill a worker mid-batch. `tokens`: a deterministic streaming model (one word per chunk, `$RTAI_TEST_TOKEN_MS` apart).
Both hang (ten minutes: a deadlock, as far as a test can tell) on the input `$RTAI_TEST_HANG_ON`, where it is set.
`bulky`: VADER whose results carry `$RTAI_TEST_RESULT_BYTES` of padding, so a few results fill a socket's buffers.
`crashing`: VADER that kills its process on the input `poison`, as a crash in native model code would;
`crashing_tokens`: the same for `tokens`, after the first chunk of an input starting with `poison`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rtai_worker.engine import ModelInfo, ModelInput
from rtai_worker.models.options import ModelOptions
from rtai_worker.models.vader import VaderModel

HANG_S = 600.0


def _hang_on(texts: Iterable[str]) -> None:
    """Sleep HANG_S if one of `texts` is `$RTAI_TEST_HANG_ON` (set on the worker a test wants to see hang)."""
    trigger = os.environ.get("RTAI_TEST_HANG_ON")
    if trigger is not None and trigger in texts:
        time.sleep(HANG_S)


def _count(batch: Sequence[ModelInput]) -> None:
    """Append the batch's texts to this process's file in RTAI_TEST_COUNT_DIR (if set): which process ran what."""
    where = os.environ.get("RTAI_TEST_COUNT_DIR")
    if where is None:
        return
    with (Path(where) / f"{os.getpid()}.txt").open("a") as f:
        for item in batch:
            f.write(item.text.replace("\n", " ") + "\n")


class CountingModel(VaderModel):
    def __init__(self, options: ModelOptions) -> None:
        super().__init__(options)
        if "RTAI_TEST_COUNT_DIR" not in os.environ:
            raise RuntimeError("CountingModel needs RTAI_TEST_COUNT_DIR: counting is all it is for")

    def predict(self, batch: Sequence[ModelInput]) -> list[Any]:
        _count(batch)
        return super().predict(batch)


class SlowModel(VaderModel):
    def __init__(self, options: ModelOptions) -> None:
        super().__init__(options)
        # Slow on purpose: it must run in a thread like any heavy model, never on the worker's event loop.
        self._info = dataclasses.replace(self._info, name="slow", fingerprint="test-slow/1", inline=False)

    def predict(self, batch: Sequence[ModelInput]) -> list[Any]:
        _hang_on(item.text for item in batch)
        time.sleep(float(os.environ.get("RTAI_TEST_SLOW_MS", "200")) / 1000)
        _count(batch)
        return super().predict(batch)


class CrashingModel(VaderModel):
    """VADER that kills its process (as a segfault in native model code would) on the input `poison`."""

    def predict(self, batch: Sequence[ModelInput]) -> list[Any]:
        if any(item.text == "poison" for item in batch):
            os._exit(70)
        return super().predict(batch)


class BulkyModel(VaderModel):
    def predict(self, batch: Sequence[ModelInput]) -> list[Any]:
        padding = "x" * int(os.environ.get("RTAI_TEST_RESULT_BYTES", "65536"))
        return [{"result": r, "padding": padding} for r in super().predict(batch)]


class TokenModel:
    """Streams the words of its input, uppercased, deterministically; the result is the full text."""

    def __init__(self, options: ModelOptions) -> None:
        self._delay = float(os.environ.get("RTAI_TEST_TOKEN_MS", "20")) / 1000
        self.info = ModelInfo(name="tokens", fingerprint="test-tokens/1", max_input_chars=2000, streaming=True)

    def load(self) -> None:
        pass

    def warmup(self) -> None:
        pass

    def predict(self, batch: Sequence[ModelInput]) -> list[Any]:
        return [{"text": item.text.upper()} for item in batch]

    def stream(self, item: ModelInput) -> Iterator[Any]:
        limit = int(item.options.get("max_new_tokens", 1000))
        _hang_on([item.text])
        for i, word in enumerate(item.text.split()):
            if i >= limit:
                return
            time.sleep(self._delay)
            yield word.upper()

    def sort_key(self, item: ModelInput) -> int:
        return len(item.text)


def counting(options: ModelOptions) -> CountingModel:
    return CountingModel(options)


def slow(options: ModelOptions) -> SlowModel:
    return SlowModel(options)


def crashing(options: ModelOptions) -> CrashingModel:
    return CrashingModel(options)


def bulky(options: ModelOptions) -> BulkyModel:
    return BulkyModel(options)


def tokens(options: ModelOptions) -> TokenModel:
    return TokenModel(options)


TOKENS_TASK = "generate=tests.support.fake_models:tokens"
"""A worker's task spec for the streaming TokenModel."""
LONG_TEXT = " ".join(f"w{i}" for i in range(40))
"""An input TokenModel streams as 40 chunks."""


class CrashingTokenModel(TokenModel):
    """TokenModel that kills its process after the first chunk of the input `poison` (a crash in native code)."""

    def stream(self, item: ModelInput) -> Iterator[Any]:
        for i, chunk in enumerate(super().stream(item)):
            if i == 1 and item.text.startswith("poison"):
                os._exit(70)
            yield chunk


def crashing_tokens(options: ModelOptions) -> CrashingTokenModel:
    return CrashingTokenModel(options)
