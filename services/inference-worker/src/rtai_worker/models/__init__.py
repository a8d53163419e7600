"""Built-in models and the resolver that turns a model spec from the settings into a `Model`.

A spec is a built-in name (`vader`), an import path (`package.module:factory`) or the name of an entry point in the
`rtai.models` group. A factory is any callable taking the worker's `ModelOptions` and returning a `Model`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points

from rtai_worker.engine import Model
from rtai_worker.models.options import ModelOptions

ModelFactory = Callable[[ModelOptions], Model]

BUILTIN_MODELS: dict[str, str] = {
    "vader": "rtai_worker.models.vader:VaderModel",
    "minilm-embed": "rtai_worker.models.minilm:MiniLMEmbedModel",
    "minilm-sentiment": "rtai_worker.models.minilm_sentiment:MiniLMSentimentModel",
    "smollm2": "rtai_worker.models.smollm2:SmolLM2Model",
}
"""Built-in name -> import path. Import paths are resolved lazily so heavy dependencies load only when used."""

ENTRY_POINT_GROUP = "rtai.models"


class ModelSpecError(ValueError):
    """The configured model spec names nothing that can be loaded."""


def _import_path(path: str) -> ModelFactory:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ModelSpecError(f"model spec {path!r} must look like 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelSpecError(f"cannot import {module_name!r} for model spec {path!r}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelSpecError(f"{path!r} is not a callable model factory")
    return factory  # type: ignore[no-any-return]


def resolve_factory(spec: str) -> ModelFactory:
    """Find the factory for a model spec, or raise ModelSpecError naming what was tried."""
    if spec in BUILTIN_MODELS:
        return _import_path(BUILTIN_MODELS[spec])
    if ":" in spec:
        return _import_path(spec)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            factory = ep.load()
            if not callable(factory):
                raise ModelSpecError(f"entry point {spec!r} is not callable")
            return factory  # type: ignore[no-any-return]
    known = ", ".join(sorted(BUILTIN_MODELS))
    raise ModelSpecError(
        f"unknown model {spec!r}: use a built-in ({known}), 'module:factory' or an {ENTRY_POINT_GROUP} entry point"
    )


def create_model(spec: str, options: ModelOptions) -> Model:
    """Build (not yet load) the model a spec names."""
    model = resolve_factory(spec)(options)
    if not isinstance(model, Model):
        raise ModelSpecError(
            f"model spec {spec!r} built {type(model).__name__}, which does not implement rtai_worker.engine.Model"
        )
    return model
