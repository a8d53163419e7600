"""The model interface every task's model implements, and the value types it trades in.

A model is loaded once per worker process, then called with whole batches off the event loop (a thread), so
`predict` and `stream` are plain blocking functions. Streaming models yield chunks one by one; the worker
checks for cancellation between chunks, so a model only has to yield often.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

JSONValue = Any
"""A value that encodes to JSON (dict, list, str, int, float, bool, None)."""


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One request's input as a model sees it."""

    text: str
    options: Mapping[str, JSONValue] = field(default_factory=dict)
    seed: int = 0
    """Deterministic seed derived from the request id: a re-run after a crash must produce the same output."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What a model declares about itself. `fingerprint` names the exact configuration (model, weights,
    version, options that change outputs): two workers may serve one task only if their fingerprints match."""

    name: str
    fingerprint: str
    max_input_chars: int
    streaming: bool = False
    device: str = "cpu"
    inline: bool = False
    """True for models that take microseconds per batch (VADER): the worker calls them on its event loop, since a
    hand-off to a thread would cost more than the model."""
    pads: bool = False
    """True when a batch costs as much as its longest input times its size (transformers): the worker then sorts a
    batch by `sort_key` and cuts it into micro-batches of similar length."""


class ModelError(Exception):
    """A request the model cannot serve (bad option, input it refuses). Reported to the client as `invalid_request`."""


class DeadlinePassed(Exception):
    """Returned (not raised) by `predict` for an item it stopped at its request's deadline (`options["deadline_ms"]`,
    wall-clock ms), for a model whose items take long (generation): the gateway has answered it `deadline_exceeded`
    already, and the batch's other items should not wait for work nobody will read."""


@runtime_checkable
class Model(Protocol):
    """A loaded model. Built by a `ModelFactory`, then `load()`ed and `warmup()`ed before the worker
    registers its task, so a registered task always answers at full speed."""

    @property
    def info(self) -> ModelInfo: ...

    def load(self) -> None:
        """Load weights. May take seconds; runs in a thread."""

    def warmup(self) -> None:
        """Run one tiny inference so the first real request is not the slow one."""

    def predict(self, batch: Sequence[ModelInput]) -> list[JSONValue]:
        """One output per input, same order. Raising fails the whole batch; raise ModelError for a
        per-request refusal by returning it instead: an element that is a ModelError fails only that request (and
        one that is a DeadlinePassed answers it `deadline_exceeded`; any other exception, `internal`). The worker
        does not call it for a streaming model (`info.streaming`): its plain requests run through `stream` too."""
        ...

    def stream(self, item: ModelInput) -> Iterator[JSONValue]:
        """Yield chunks for one input; the worker sends each as a `chunk` frame (for a plain request, `stream: false`,
        none: only the result). The value returned by the generator (StopIteration.value) is the final `result`
        output; None means `{"chunks": n}` for a streamed request and the list of chunks for a plain one. Only called
        when `info.streaming` is true, for every request of the task, one step at a time in a model thread."""
        ...

    def sort_key(self, item: ModelInput) -> int:
        """Cost estimate (e.g. token count) used to sort a batch and cut micro-batches by length."""
        ...
