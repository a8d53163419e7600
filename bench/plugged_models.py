"""Models the benchmark plugs into its workers by import path (`plugged_models:<factory>`), as a user plugs their own.

B measures what dynamic batching buys. The shipped CPU `embed` backend (the int8 ONNX graph) gains little from
batches on 2 cores (alone, on B's short texts: ~440 texts/s at batch 1, ~600 at 32; about 1.0x on longer sentences),
so B also runs the same weights in torch fp32, which gains ~4x (~80-100 -> ~350-380 texts/s): that shows whether the
pipeline passes a model's batch gain on to its clients.
"""

from __future__ import annotations

from rtai_worker.engine import Model
from rtai_worker.models.minilm import MiniLMEmbedModel
from rtai_worker.models.options import ModelOptions


def minilm_embed_torch_fp32(options: ModelOptions) -> Model:
    """Task `embed` on MiniLM's published fp32 weights in torch (slower than the default at every batch size)."""
    return MiniLMEmbedModel(options, backend="torch-fp32")
