"""Worker-wide options every model factory receives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ModelOptions:
    device: str = "cpu"
    """`cpu` or `cuda`; a model asked for `cuda` where none exists must fail to load with a clear error."""
    cache_dir: Path = Path.home() / ".cache" / "rtai"
    """Where converted artifacts (ONNX graphs, safetensors) are built once and reused."""
