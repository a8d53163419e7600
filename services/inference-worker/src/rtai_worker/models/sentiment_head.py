"""A multinomial logistic-regression head over MiniLM embeddings + VADER's four scores, in plain numpy.

Training is full-batch accelerated gradient descent on the L2-regularised cross-entropy of standardised features:
deterministic (no random init, no shuffling), so `scripts/train_sentiment_head.py` reproduces the committed
`sentiment_head.json` bit for bit from the same embeddings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

LABELS = ("negative", "neutral", "positive")
VADER_KEYS = ("neg", "neu", "pos", "compound")
VADER_FEATURES = (*VADER_KEYS, "compound>=0.05", "compound<=-0.05")
"""VADER's scores plus its own 3-class decision as two indicators, so the linear head can reproduce VADER's labels
where they are right (on tweets, VADER's home ground) and lean on the embedding elsewhere."""
HEAD_PATH = Path(__file__).with_name("sentiment_head.json")
DEFAULT_L2 = 0.03
"""Chosen by `scripts/train_sentiment_head.py --select`: best macro-F1 on an inner validation split of the training
rows (0.741, accuracy 0.909), with unweighted classes."""

Array = npt.NDArray[np.float64]


class _Analyzer(Protocol):
    def polarity_scores(self, text: str) -> Mapping[str, float]: ...


def vader_features(analyzer: _Analyzer, texts: Sequence[str]) -> Array:
    rows = []
    for text in texts:
        scores = analyzer.polarity_scores(text)
        compound = scores["compound"]
        rows.append([*(scores[k] for k in VADER_KEYS), float(compound >= 0.05), float(compound <= -0.05)])
    return np.asarray(rows, dtype=np.float64).reshape(len(texts), len(VADER_FEATURES))


def features(embeddings: npt.NDArray[Any], vader: Array) -> Array:
    return np.hstack([np.asarray(embeddings, dtype=np.float64), vader])


class _Encoder(Protocol):
    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


def featurize(encoder: _Encoder, analyzer: _Analyzer, texts: Sequence[str]) -> Array:
    """The head's input for `texts`: MiniLM embedding + VADER features."""
    return features(encoder.encode(texts), vader_features(analyzer, texts))


def _softmax(z: Array) -> Array:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


@dataclass(frozen=True)
class SentimentHead:
    mean: Array
    scale: Array
    weights: Array  # (n_features, n_labels)
    bias: Array  # (n_labels,)
    labels: tuple[str, ...] = LABELS
    meta: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, x: npt.NDArray[Any]) -> Array:
        z = ((np.asarray(x, dtype=np.float64) - self.mean) / self.scale) @ self.weights + self.bias
        return _softmax(z)

    def to_json(self) -> str:
        def rounded(a: Array) -> list[Any]:
            # 7 decimals: about float32 precision for these magnitudes; outputs unchanged to ~1e-6.
            values: list[Any] = np.round(a.astype(np.float64), 7).tolist()
            return values

        doc = {
            "format": "rtai-sentiment-head/1",
            "labels": list(self.labels),
            "features": f"minilm-embedding[{self.weights.shape[0] - len(VADER_FEATURES)}] "
            f"+ vader[{','.join(VADER_FEATURES)}]",
            "meta": self.meta,
            "mean": rounded(self.mean),
            "scale": rounded(self.scale),
            "weights": rounded(self.weights),
            "bias": rounded(self.bias),
        }
        return json.dumps(doc, separators=(",", ":")) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SentimentHead:
        doc = json.loads(text)
        if doc.get("format") != "rtai-sentiment-head/1":
            raise ValueError(f"not a sentiment head: format {doc.get('format')!r}")
        return cls(
            mean=np.asarray(doc["mean"], dtype=np.float64),
            scale=np.asarray(doc["scale"], dtype=np.float64),
            weights=np.asarray(doc["weights"], dtype=np.float64),
            bias=np.asarray(doc["bias"], dtype=np.float64),
            labels=tuple(doc["labels"]),
            meta=dict(doc.get("meta", {})),
        )


def head_digest(path: Path = HEAD_PATH) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_head(path: Path = HEAD_PATH) -> SentimentHead:
    return SentimentHead.from_json(path.read_text(encoding="utf-8"))


def fit_head(
    x: npt.NDArray[Any],
    y: Sequence[int] | npt.NDArray[np.int64],
    *,
    l2: float = DEFAULT_L2,
    balanced: bool = False,
    iterations: int = 1500,
    meta: dict[str, Any] | None = None,
) -> SentimentHead:
    """Fit the head. `y` holds indices into LABELS. `balanced` weights classes inversely to their frequency
    (neutral is rare in both sets and would otherwise almost never be predicted)."""
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(y, dtype=np.int64)
    n, d = x.shape
    k = len(LABELS)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    xs = (x - mean) / scale
    onehot = np.eye(k)[labels]
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    class_w = n / (k * np.maximum(counts, 1.0)) if balanced else np.ones(k)
    sample_w = class_w[labels] / n
    # Lipschitz bound of the gradient: 0.5 * max sample weight * n * largest eigenvalue of X^T X / n, plus l2.
    xb = np.hstack([xs, np.ones((n, 1))])
    lipschitz = 0.5 * float(sample_w.max()) * float(np.linalg.eigvalsh(xb.T @ xb).max()) + l2
    step = 1.0 / lipschitz
    theta = np.zeros((d + 1, k))
    velocity = theta.copy()
    for t in range(1, iterations + 1):
        look = theta + (t - 1) / (t + 2) * (theta - velocity)  # Nesterov
        probs = _softmax(xb @ look)
        grad = xb.T @ ((probs - onehot) * sample_w[:, None])
        grad[:-1] += l2 * look[:-1]
        velocity = theta
        theta = look - step * grad
    return SentimentHead(
        mean=mean,
        scale=scale,
        weights=theta[:-1],
        bias=theta[-1],
        meta=dict(meta or {}) | {"l2": l2, "balanced": balanced, "iterations": iterations, "rows": n},
    )
