from __future__ import annotations

import pytest

from rtai_worker.models import BUILTIN_MODELS, ModelSpecError, create_model, resolve_factory
from rtai_worker.models.options import ModelOptions


def test_builtins_are_registered_by_import_path() -> None:
    assert {"vader", "minilm-embed", "minilm-sentiment", "smollm2"} <= set(BUILTIN_MODELS)
    assert all(":" in path for path in BUILTIN_MODELS.values())


def test_an_import_path_resolves_like_a_builtin() -> None:
    assert resolve_factory("rtai_worker.models.vader:VaderModel") is resolve_factory("vader")
    model = create_model("rtai_worker.models.vader:VaderModel", ModelOptions())
    assert model.info.name == "vader"


@pytest.mark.parametrize("spec", ["no-such-model", "rtai_worker.models.vader:Nope", "no_such_module:factory"])
def test_unknown_specs_fail_with_a_clear_error(spec: str) -> None:
    with pytest.raises(ModelSpecError):
        resolve_factory(spec)


def test_unknown_device_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown device"):
        create_model("minilm-embed", ModelOptions(device="tpu"))


@pytest.mark.parametrize("spec", ["minilm-embed", "minilm-sentiment", "smollm2"])
def test_cuda_requested_and_absent_is_a_clear_error(spec: str, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import torch

        # On a GPU host, hide the device: the check under test is the same there.
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="cuda"):
        create_model(spec, ModelOptions(device="cuda"))
