"""`sentiment-minilm`: MiniLM embeddings + VADER's four scores -> a small logistic-regression head.

Stronger than VADER off its home ground (see docs/models.md for accuracy); it has its own task name because its
answers differ from VADER's. The head (`sentiment_head.json`, a few KB) is trained by
`scripts/train_sentiment_head.py` from the shipped labelled data and committed; the MiniLM backend follows the
device (static int8 ONNX on CPU), and the head was fitted on the CPU backend's embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from importlib.metadata import version
from typing import Any

from rtai_worker.engine import JSONValue, ModelInfo, ModelInput
from rtai_worker.models.minilm import MiniLMEncoder
from rtai_worker.models.options import ModelOptions
from rtai_worker.models.sentiment_head import HEAD_PATH, SentimentHead, featurize, head_digest, load_head


class MiniLMSentimentModel:
    """`{"label": "positive"|"neutral"|"negative", "scores": {label: probability}}` per input."""

    def __init__(self, options: ModelOptions) -> None:
        self._encoder = MiniLMEncoder(options)
        self._head: SentimentHead | None = None
        self._analyzer: Any = None
        self._info = ModelInfo(
            name="minilm-sentiment",
            fingerprint=(
                f"minilm-sentiment/head={head_digest(HEAD_PATH)}/vader=={version('vadersentiment')}/"
                f"{self._encoder.fingerprint}"
            ),
            max_input_chars=10_000,
            device=options.device,
            pads=True,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def load(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._encoder.load()
        self._analyzer = SentimentIntensityAnalyzer()
        self._head = load_head(HEAD_PATH)

    def warmup(self) -> None:
        self.predict([ModelInput(text="warming up is good"), ModelInput(text="this is a terrible way to start")])

    def predict(self, batch: Sequence[ModelInput]) -> list[JSONValue]:
        head, analyzer = self._head, self._analyzer
        if head is None or analyzer is None:
            raise RuntimeError("MiniLMSentimentModel.predict before load()")
        texts = [item.text for item in batch]
        probs = head.predict_proba(featurize(self._encoder, analyzer, texts))
        out: list[JSONValue] = []
        for row in probs:
            scores = {label: round(float(p), 6) for label, p in zip(head.labels, row, strict=True)}
            out.append({"label": head.labels[int(row.argmax())], "scores": scores})
        return out

    def stream(self, item: ModelInput) -> Iterator[JSONValue]:
        raise NotImplementedError("minilm-sentiment does not stream")

    def sort_key(self, item: ModelInput) -> int:
        return self._encoder.token_count(item.text)
