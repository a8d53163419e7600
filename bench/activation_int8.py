"""Would int8 activations make the CPU `embed` model batch better? A measured candidate, not what ships.

    python bench/activation_int8.py [--seconds 3] [--rounds 2] [--skip intermediate.output] [--alpha 0.8] [--out FILE]

The shipped MiniLM graph (`rtai_worker.models._minilm_graph`) keeps its activations in float: its 18 dense MatMuls
dequantise int8 weights, so ONNX Runtime runs float GEMMs. This writes a variant with a static QuantizeLinear /
DequantizeLinear pair (uint8, one scale per tensor, calibrated as min/max over 399 texts of the Amazon set) on the
input of each dense MatMul, which ONNX Runtime fuses into MatMulIntegerToFloat (int8 GEMMs with VNNI where the CPU
has it). Static scales keep a text's vector independent of its batch mates. `--skip` leaves the named dense inputs
float (`intermediate.output` is the FFN's second MatMul, after GELU, whose activations have the widest range;
`layer.1.intermediate.output` that of layer 1 only). `--alpha` smooths the activations first (SmoothQuant, see
`with_activation_qdq`).

It prints and writes one JSON object: the ops after fusion, the cosine of each variant to the published weights in
torch fp32 over 128 tweets (the shipped graph's test asks >= 0.99 for every text), and both graphs' texts/s at
batch 1 and 32 on the load generator's texts, alternating in rounds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from tokenizers import Tokenizer

from rtai_client.loadgen import DEFAULT_TEXTS
from rtai_worker.models._minilm_graph import build_int8, quantize_columns
from rtai_worker.models.minilm import MiniLMEncoder, model_dir
from rtai_worker.models.options import ModelOptions

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
Array = np.ndarray[Any, Any]


def texts_of(name: str, first: int, count: int) -> list[str]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[-1].strip() for line in lines[first : first + count]]


class Feeder:
    def __init__(self) -> None:
        self.tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        self.tok.no_padding()
        self.tok.enable_truncation(256)

    def feed(self, texts: list[str]) -> tuple[dict[str, Array], Array]:
        rows = [e.ids for e in self.tok.encode_batch(texts)]
        ids = np.zeros((len(rows), max(map(len, rows))), np.int64)
        mask = np.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}, mask


def pooled(session: ort.InferenceSession, feeder: Feeder, texts: list[str]) -> Array:
    feed, mask = feeder.feed(texts)
    hidden = session.run(None, feed)[0]
    m = mask[..., None].astype(np.float32)
    v = (hidden * m).sum(1) / m.sum(1)
    return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True))


def ranges(base: Path, feeder: Feeder, names: list[str], texts: list[str]) -> dict[str, tuple[Array, Array]]:
    """Per-channel min and max of each dense input over the calibration texts (padding excluded)."""
    probe = onnx.load(str(base))
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    seen: dict[str, tuple[Array, Array]] = {}
    for i in range(0, len(texts), 16):
        feed, mask = feeder.feed(texts[i : i + 16])
        for name, out in zip(names, session.run(names, feed), strict=True):
            real = out[mask.astype(bool)]
            lo, hi = real.min(0), real.max(0)
            if name in seen:
                lo, hi = np.minimum(seen[name][0], lo), np.maximum(seen[name][1], hi)
            seen[name] = (lo, hi)
    return seen


def with_activation_qdq(base: Path, out: Path, limits: dict[str, tuple[Array, Array]], alpha: float) -> None:
    """The graph with a quantiser in front of each dense MatMul named in `limits`. With `alpha` > 0, SmoothQuant's
    smoothing first: each input channel j is divided by s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) (a Mul) and
    the weight's row j multiplied by it (requantised per column), so that a few outlier channels no longer stretch
    the one scale of the whole tensor."""
    model = onnx.load(str(base))
    inits = {i.name: i for i in model.graph.initializer}
    dequantized = {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}
    nodes = []
    for node in model.graph.node:
        x = node.input[0] if node.op_type == "MatMul" else ""
        if x in limits:
            lo, hi = limits[x]
            if alpha > 0:
                dq = dequantized[node.input[1]]
                weight = numpy_helper.to_array(inits[dq.input[0]]) * numpy_helper.to_array(inits[dq.input[1]])
                amax = np.maximum(np.abs(lo), np.abs(hi)) + 1e-6
                smooth = np.clip(amax**alpha / (np.abs(weight).max(1) + 1e-6) ** (1 - alpha), 1e-3, 1e3)
                q, scale_w = quantize_columns((weight * smooth[:, None]).astype(np.float32))
                inits[dq.input[0]].CopyFrom(numpy_helper.from_array(q, dq.input[0]))
                inits[dq.input[1]].CopyFrom(numpy_helper.from_array(scale_w, dq.input[1]))
                lo, hi = lo / smooth, hi / smooth
                model.graph.initializer.append(numpy_helper.from_array((1 / smooth).astype(np.float32), f"{x}_inv"))
                nodes.append(helper.make_node("Mul", [x, f"{x}_inv"], [f"{x}_smooth"]))
                source = f"{x}_smooth"
            else:
                source = x
            low, high = min(float(lo.min()), 0.0), max(float(hi.max()), 0.0)
            scale = np.float32((high - low) / 255.0)
            zero = np.uint8(np.clip(round(-low / float(scale)), 0, 255))
            model.graph.initializer.extend(
                [
                    numpy_helper.from_array(np.array(scale), f"{x}_scale"),
                    numpy_helper.from_array(np.array(zero), f"{x}_zp"),
                ]
            )
            nodes.append(helper.make_node("QuantizeLinear", [source, f"{x}_scale", f"{x}_zp"], [f"{x}_q"]))
            nodes.append(helper.make_node("DequantizeLinear", [f"{x}_q", f"{x}_scale", f"{x}_zp"], [f"{x}_dq"]))
            node.input[0] = f"{x}_dq"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))


def session_of(path: Path, optimized: Path | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def rate(session: ort.InferenceSession, feeder: Feeder, size: int, seconds: float) -> float:
    texts = itertools.cycle(DEFAULT_TEXTS)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        feed, _ = feeder.feed([next(texts) for _ in range(size)])
        session.run(None, feed)
        done += size
    return done / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated parts of dense input names to leave float")
    parser.add_argument("--alpha", type=float, default=0.0, help="SmoothQuant's migration strength (0: none)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    skip = [s for s in args.skip.split(",") if s]
    feeder = Feeder()
    with tempfile.TemporaryDirectory(prefix="rtai-qdq-") as tmp:
        base, variant = Path(tmp) / "shipped.onnx", Path(tmp) / "qdq.onnx"
        build_int8(model_dir(), base)
        dense = [n.input[0] for n in onnx.load(str(base)).graph.node if n.op_type == "MatMul"]
        chosen = [x for x in dense if not any(part in x for part in skip)]
        limits = ranges(base, feeder, chosen, texts_of("vader_amazon_gt.tsv", 0, 399))
        with_activation_qdq(base, variant, limits, args.alpha)
        shipped, qdq = session_of(base), session_of(variant, Path(tmp) / "qdq.opt.onnx")
        fused = Counter(n.op_type for n in onnx.load(str(Path(tmp) / "qdq.opt.onnx")).graph.node)
        evaluation = texts_of("vader_tweets_gt.tsv", 0, 128)
        reference = MiniLMEncoder(ModelOptions(), "torch-fp32")
        reference.load()
        ref = reference.encode(evaluation, sort=False)
        cosines = {
            name: (pooled(s, feeder, evaluation) * ref).sum(1) for name, s in (("shipped", shipped), ("qdq", qdq))
        }
        rounds = []
        for _ in range(args.rounds):
            rounds.append({f"{name} b{size}": round(rate(s, feeder, size, args.seconds), 1)
                           for size in (1, 32) for name, s in (("shipped", shipped), ("qdq", qdq))})  # fmt: skip
    result = {
        "quantized_inputs": len(chosen),
        "skipped": skip,
        "alpha": args.alpha,
        "ops_after_fusion": dict(fused.most_common()),
        "cosine_to_torch_fp32": {
            k: {"min": round(float(v.min()), 4), "mean": round(float(v.mean()), 4)} for k, v in cosines.items()
        },
        "texts_per_s": rounds,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
