"""Test models for the live observability test, loaded by the worker through its import-path model spec
(`slow=slow_model:slow`, `stream=slow_model:streaming`) with this folder on PYTHONPATH.

- `slow`: sleeps `RTAI_OBS_SLOW_S` seconds (default 3) per batch, so a test can pause or kill a worker while it
  holds a job and watch another worker reclaim it.
- `streaming`: yields a few chunks with a short pause between them, so the gateway records time to first chunk.
The sleep length is left out of the fingerprint on purpose: it does not change outputs, and the worker that
reclaims the job must serve the same model configuration.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from rtai_worker.engine import JSONValue, ModelInfo, ModelInput


class _Base:
    def __init__(self, info: ModelInfo) -> None:
        self._info = info

    @property
    def info(self) -> ModelInfo:
        return self._info

    def load(self) -> None:
        return None

    def warmup(self) -> None:
        return None

    def sort_key(self, item: ModelInput) -> int:
        return len(item.text)


class SlowModel(_Base):
    def __init__(self) -> None:
        super().__init__(ModelInfo(name="obs-slow", fingerprint="obs-slow/1", max_input_chars=1000))
        self.delay_s = float(os.environ.get("RTAI_OBS_SLOW_S", "3"))

    def predict(self, batch: Sequence[ModelInput]) -> list[JSONValue]:
        time.sleep(self.delay_s)
        return [{"length": len(item.text)} for item in batch]

    def stream(self, item: ModelInput) -> Iterator[JSONValue]:
        raise NotImplementedError("obs-slow does not stream")


class StreamingModel(_Base):
    def __init__(self) -> None:
        super().__init__(ModelInfo(name="obs-stream", fingerprint="obs-stream/1", max_input_chars=1000, streaming=True))

    def predict(self, batch: Sequence[ModelInput]) -> list[JSONValue]:
        return [item.text.split() for item in batch]

    def stream(self, item: ModelInput) -> Iterator[JSONValue]:
        for word in item.text.split()[:5]:
            time.sleep(0.01)
            yield word
        return None


def slow(options: Any) -> SlowModel:
    return SlowModel()


def streaming(options: Any) -> StreamingModel:
    return StreamingModel()
