from __future__ import annotations

import pytest

from rtai_worker.engine import Model, ModelInput
from rtai_worker.models import create_model
from rtai_worker.models.options import ModelOptions


@pytest.fixture(scope="module")
def vader() -> Model:
    model = create_model("vader", ModelOptions())
    model.load()
    model.warmup()
    return model


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I love this, it is wonderful!", "positive"),
        ("This is the worst service ever. Horrible.", "negative"),
        ("The package arrived on Tuesday.", "neutral"),
        ("The movie was not good at all", "negative"),
    ],
)
def test_vader_labels_known_inputs(vader: Model, text: str, label: str) -> None:
    (out,) = vader.predict([ModelInput(text=text)])
    assert out["label"] == label
    assert set(out["scores"]) == {"neg", "neu", "pos", "compound"}


def test_vader_refuses_cuda() -> None:
    with pytest.raises(ValueError, match="cpu only"):
        create_model("vader", ModelOptions(device="cuda"))
