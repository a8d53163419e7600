"""One-off export of all-MiniLM-L6-v2 to a fused, statically quantised int8 ONNX graph for ONNX Runtime on CPU.

Needs torch, transformers and onnx (`make install-models`); serving the result needs only onnxruntime and
tokenizers. Steps, each chosen for a measured reason (see docs/models.md):
1. export the BERT encoder with `attn_implementation="eager"` (the SDPA path does not trace to a graph the
   optimizer can fuse) and with a padded example, so the attention-mask path is traced rather than folded away;
2. `onnxruntime.transformers.optimizer` fuses it (EmbedLayerNormalization, Attention, SkipLayerNormalization,
   BiasGelu);
3. static int8 quantisation (QDQ) of the MatMuls, per-channel weight scales, activation ranges calibrated once
   (MinMax) on the shipped texts in `minilm_calibration.json`, one text per run so padding never enters a range.
   Static, not dynamic: dynamic quantisation picks each activation scale per batch tensor, so a text's vector
   moved with its batch mates (cosine 0.935 at worst to the same text embedded alone); with fixed scales the
   vector of a text does not depend on the batch at all (measured identical bit for bit). ONNX Runtime (1.32)
   runs this graph as int8-weight MatMulNBits with float activations: cosine to torch fp32 0.9993 on average.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "last_hidden_state"
OPSET = 17
CALIBRATION_PATH = Path(__file__).with_name("minilm_calibration.json")
"""Texts the activation ranges are calibrated on (train-split rows; `scripts/make_minilm_calibration.py`)."""


def calibration_texts(path: Path = CALIBRATION_PATH) -> list[str]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    if doc.get("format") != "rtai-calibration/1":
        raise ValueError(f"{path}: not a calibration file (format {doc.get('format')!r})")
    texts: list[str] = doc["texts"]
    return texts


def _calibration_feeds(model_dir: Path, max_tokens: int) -> list[dict[str, Any]]:
    """One feed per calibration text, unpadded, tokenised as when serving."""
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_tokens)
    feeds = []
    for encoding in tokenizer.encode_batch(calibration_texts()):
        ids = np.asarray([encoding.ids], dtype=np.int64)
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    return feeds


def export_int8(model_dir: Path, out_path: Path, *, max_tokens: int = 256) -> None:
    """Write the quantised graph for the model in `model_dir` to `out_path`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.transformers.optimizer import optimize_model
        from transformers import AutoModel
    except ImportError as e:
        raise RuntimeError(
            f"exporting MiniLM to ONNX needs torch, transformers and onnx ({e}); run `make install-models`, "
            "or build the cache where they are installed (`python -m rtai_worker.models.build`)"
        ) from e

    bert: Any = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class _Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # a padded row, so the mask arithmetic is part of the traced graph
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUT_NAMES, OUTPUT_NAME)}
    with tempfile.TemporaryDirectory(prefix="rtai-minilm-export-") as tmp, warnings.catch_warnings():
        # Tracing warns about data-dependent branches it records as constants; the padded example covers them.
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "raw.onnx"
        fused = Path(tmp) / "fused.onnx"
        with torch.no_grad():
            torch.onnx.export(
                _Encoder(),
                (ids, mask, torch.zeros_like(ids)),
                str(raw),
                input_names=list(INPUT_NAMES),
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
            )
        config = bert.config
        optimized = optimize_model(
            str(raw),
            model_type="bert",
            num_heads=config.num_attention_heads,
            hidden_size=config.hidden_size,
            opt_level=0,
        )
        stats = optimized.get_fused_operator_statistics()
        if stats.get("Attention", 0) != config.num_hidden_layers:
            raise RuntimeError(f"attention fusion failed for MiniLM (fused operators: {stats})")
        optimized.save_model_to_file(str(fused))
        feeds = iter(_calibration_feeds(model_dir, max_tokens))

        class _Reader(CalibrationDataReader):  # type: ignore[misc]
            def get_next(self) -> dict[str, Any] | None:
                return next(feeds, None)

        quantize_static(
            str(fused),
            str(out_path),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # The fused contrib ops defeat ONNX shape inference; their outputs are float.
            extra_options={"DefaultTensorType": 1},
        )
