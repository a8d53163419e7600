"""all-MiniLM-L6-v2 as a fused ONNX Runtime graph with int8 weights, written straight from the published
safetensors: no torch, no tracing, so a CPU worker image builds it at its first start from the weights package alone.

The graph is the one that tracing the model in torch, fusing it with `onnxruntime.transformers.optimizer` and
quantising it with `quantize_static` gave (export v2 until 2026-12-02: identical outputs, bit for bit), spelled out
node by node:

    EmbedLayerNormalization (word + position + token type embeddings, LayerNorm; the mask -> per-row lengths)
    6 x [ Attention (fused QKV projection, 12 heads, masked softmax)
          MatMul (output projection) -> SkipLayerNormalization (+ bias, + residual, LayerNorm)
          MatMul (intermediate) -> BiasGelu
          MatMul (output) -> SkipLayerNormalization ]

The 18 dense MatMul weights are stored as int8 with one symmetric scale per output column (DequantizeLinear, axis
1), exactly as onnxruntime's static quantisation stores them for this model. Activations stay float: that
quantisation inserts no activation quantisers here, because shape inference cannot see through the fused contrib ops.
So a text's vector does not depend on its batch mates.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
OPSET = 17
_MS = "com.microsoft"
_INT8_MAX = 127


def read_safetensors(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    """The float32 tensors of a safetensors file (8-byte little-endian header length, JSON header, raw data)."""
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue  # position_ids (I64) is 0..511, which the fused embedding op computes itself
        start, end = meta["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype="<f4").reshape(meta["shape"]).astype(np.float32)
    return out


def quantize_columns(w: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Symmetric per-column int8 (range -127..127, zero point 0) of a [in, out] matrix: (int8 matrix, scales)."""
    absmax = np.abs(w).max(axis=0)
    scale = (absmax / _INT8_MAX).astype(np.float32)
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(w / scale), -_INT8_MAX, _INT8_MAX).astype(np.int8)
    return q, scale


def build_int8(model_dir: Path, out_path: Path) -> None:
    """Write the graph for the BERT weights in `model_dir` (config.json, model.safetensors) to `out_path`."""
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:
        raise RuntimeError(f"building the MiniLM graph needs the onnx package ({e}): install rtai-worker[embed]") from e

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        raise ValueError(f"{model_dir}: expected a BERT encoder with GELU, got {config.get('model_type')!r}")
    eps = float(config["layer_norm_eps"])
    w = read_safetensors(model_dir / "model.safetensors")
    inits: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, array: np.ndarray[Any, Any]) -> str:
        inits.append(numpy_helper.from_array(array, name))
        return name

    def dense(x: str, prefix: str, out: str) -> str:
        """x @ W^T with W (torch's [out, in]) stored as int8 columns; returns the MatMul output (bias not added)."""
        q, scale = quantize_columns(w[f"{prefix}.weight"].T)
        deq = f"{prefix}.weight_dequantized"
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [
                    const(f"{prefix}.weight_quantized", q),
                    const(f"{prefix}.weight_scale", scale),
                    const(f"{prefix}.weight_zero_point", np.zeros_like(scale, dtype=np.int8)),
                ],
                [deq],
                axis=1,
            )
        )
        nodes.append(helper.make_node("MatMul", [x, deq], [out]))
        return out

    def skip_layer_norm(x: str, skip: str, prefix: str, bias: str, out: str) -> str:
        nodes.append(
            helper.make_node(
                "SkipLayerNormalization",
                [
                    x,
                    skip,
                    const(f"{prefix}.weight", w[f"{prefix}.weight"]),
                    const(f"{prefix}.bias", w[f"{prefix}.bias"]),
                    const(bias, w[bias]),
                ],
                [out],
                domain=_MS,
                epsilon=eps,
            )
        )
        return out

    for name in INPUT_NAMES:
        nodes.append(helper.make_node("Cast", [name], [f"{name}_int32"], to=TensorProto.INT32))
    emb = "embeddings"
    nodes.append(
        helper.make_node(
            "EmbedLayerNormalization",
            [
                "input_ids_int32",
                "token_type_ids_int32",
                *(
                    const(f"{emb}.{t}_embeddings.weight", w[f"{emb}.{t}_embeddings.weight"])
                    for t in ("word", "position", "token_type")
                ),
                const(f"{emb}.LayerNorm.weight", w[f"{emb}.LayerNorm.weight"]),
                const(f"{emb}.LayerNorm.bias", w[f"{emb}.LayerNorm.bias"]),
                "attention_mask_int32",
            ],
            ["embedded", "mask_index"],
            domain=_MS,
            epsilon=eps,
        )
    )
    hidden = "embedded"
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}"
        qkv = [f"{p}.attention.self.{t}" for t in ("query", "key", "value")]
        nodes.append(
            helper.make_node(
                "Attention",
                [
                    hidden,
                    const(f"{p}.attention.qkv_weight", np.concatenate([w[f"{t}.weight"].T for t in qkv], axis=1)),
                    const(f"{p}.attention.qkv_bias", np.concatenate([w[f"{t}.bias"] for t in qkv])),
                    "mask_index",
                ],
                [f"{p}.attention.context"],
                domain=_MS,
                num_heads=int(config["num_attention_heads"]),
            )
        )
        projected = dense(f"{p}.attention.context", f"{p}.attention.output.dense", f"{p}.attention.projected")
        attended = skip_layer_norm(
            projected,
            hidden,
            f"{p}.attention.output.LayerNorm",
            f"{p}.attention.output.dense.bias",
            f"{p}.attention.output",
        )
        inter = dense(attended, f"{p}.intermediate.dense", f"{p}.intermediate.projected")
        nodes.append(
            helper.make_node(
                "BiasGelu",
                [inter, const(f"{p}.intermediate.dense.bias", w[f"{p}.intermediate.dense.bias"])],
                [f"{p}.intermediate.output"],
                domain=_MS,
            )
        )
        out = dense(f"{p}.intermediate.output", f"{p}.output.dense", f"{p}.output.projected")
        last = i == int(config["num_hidden_layers"]) - 1
        hidden = skip_layer_norm(
            out, attended, f"{p}.output.LayerNorm", f"{p}.output.dense.bias", OUTPUT_NAME if last else f"{p}.output"
        )

    size = int(config["hidden_size"])
    graph = helper.make_graph(
        nodes,
        "all-MiniLM-L6-v2-int8",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in INPUT_NAMES],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", "sequence", size])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(_MS, 1)], producer_name="rtai"
    )
    model.ir_version = 8
    onnx.save_model(model, str(out_path))
