"""VADER sentiment: lexicon and rules, microseconds per text, the fast CPU default for `sentiment`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from importlib.metadata import version

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rtai_worker.engine import JSONValue, ModelInfo, ModelInput
from rtai_worker.models.options import ModelOptions

# The compound-score thresholds VADER's authors recommend for a 3-class label.
POSITIVE_AT = 0.05
NEGATIVE_AT = -0.05


def label_for(compound: float) -> str:
    if compound >= POSITIVE_AT:
        return "positive"
    if compound <= NEGATIVE_AT:
        return "negative"
    return "neutral"


class VaderModel:
    def __init__(self, options: ModelOptions) -> None:
        if options.device != "cpu":
            # VADER is pure Python: asking for a GPU is a configuration mistake worth a loud error.
            raise ValueError(f"the vader model runs on cpu only, not {options.device!r}")
        self._analyzer: SentimentIntensityAnalyzer | None = None
        self._info = ModelInfo(
            name="vader",
            fingerprint=f"vader/{version('vadersentiment')}/thresholds={POSITIVE_AT},{NEGATIVE_AT}",
            max_input_chars=5000,
            inline=True,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def load(self) -> None:
        self._analyzer = SentimentIntensityAnalyzer()

    def warmup(self) -> None:
        self.predict([ModelInput(text="warming up is good")])

    def predict(self, batch: Sequence[ModelInput]) -> list[JSONValue]:
        analyzer = self._analyzer
        if analyzer is None:
            raise RuntimeError("VaderModel.predict before load()")
        out: list[JSONValue] = []
        for item in batch:
            scores = analyzer.polarity_scores(item.text)
            out.append({"label": label_for(scores["compound"]), "scores": scores})
        return out

    def stream(self, item: ModelInput) -> Iterator[JSONValue]:
        raise NotImplementedError("vader does not stream")

    def sort_key(self, item: ModelInput) -> int:
        return len(item.text)
