"""Model-level benchmark (not a test): `embed` throughput batched vs one at a time and length-sorted vs unsorted,
time to first token and tokens/s for `generate`. Brief by default (the machine's cores are shared).

    python bench/bench_models.py [--texts 512] [--gen-runs 3] [--out bench/results]

Writes bench/results/models.json and bench/results/models.md. Texts are the labelled sets' sentences (realistic,
mixed lengths); all variants embed the same texts in the same run, in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rtai_worker.engine import ModelInput
from rtai_worker.models import create_model
from rtai_worker.models import sentiment_data as sd
from rtai_worker.models.minilm import MiniLMEncoder
from rtai_worker.models.options import ModelOptions
from rtai_worker.models.smollm2 import SmolLM2Model

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "Give me three tips for sleeping well."]


def texts(n: int) -> list[str]:
    try:
        rows = sd.load("amazon") + sd.load("tweets")
        pool = [r.text for r in rows]
    except FileNotFoundError:
        slice_path = Path(__file__).resolve().parents[1] / "services/inference-worker/tests/data/sentiment_slice.tsv"
        pool = [line.split("\t", 4)[4] for line in slice_path.read_text(encoding="utf-8").splitlines()[1:]]
    step = max(1, len(pool) // n)
    return (pool[::step] * (n // len(pool[::step]) + 1))[:n]


def timed(fn: Any, repeats: int) -> float:
    fn()  # warm
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def bench_embed(options: ModelOptions, n: int, repeats: int) -> dict[str, Any]:
    encoder = MiniLMEncoder(options)
    encoder.load()
    rows = encoder.tokenize(texts(n))
    lengths = [len(r) for r in rows]
    variants = {
        "batch 1": lambda: encoder.encode_ids(rows, sort=False, micro_batch=1),
        "batch 32, unsorted": lambda: encoder.encode_ids(rows, sort=False, micro_batch=32),
        "batch 32, length-sorted": lambda: encoder.encode_ids(rows, sort=True, micro_batch=32),
    }
    out = {name: round(n / timed(fn, repeats), 1) for name, fn in variants.items()}
    return {
        "texts": n,
        "tokens_mean": round(statistics.mean(lengths), 1),
        "tokens_max": max(lengths),
        "texts_per_s": out,
        "backend": encoder.fingerprint,
    }


def bench_generate(options: ModelOptions, runs: int, max_new_tokens: int) -> dict[str, Any]:
    model = create_model("smollm2", options)
    assert isinstance(model, SmolLM2Model)
    started = time.perf_counter()
    model.load()
    load_s = time.perf_counter() - started
    model.warmup()
    ttfts, rates = [], []
    for i in range(runs):
        item = ModelInput(text=PROMPTS[i % len(PROMPTS)], options={"max_new_tokens": max_new_tokens})
        started = time.perf_counter()
        first = None
        n = 0
        for _chunk in model.stream(item):
            n += 1
            if first is None:
                first = time.perf_counter() - started
        total = time.perf_counter() - started
        if first is not None and n > 1:
            ttfts.append(first)
            rates.append((n - 1) / (total - first))
    return {
        "runs": len(ttfts),
        "max_new_tokens": max_new_tokens,
        "load_s": round(load_s, 2),
        "ttft_ms_median": round(statistics.median(ttfts) * 1000, 1),
        "tokens_per_s_median": round(statistics.median(rates), 1),
    }


def markdown(result: dict[str, Any]) -> str:
    e, g = result["embed"], result["generate"]
    lines = [
        f"Model benchmark ({result['machine']}, {result['cpus']} CPUs visible; {result['date']})",
        "",
        f"`embed` (MiniLM, {e['backend'].split('/')[2]}), {e['texts']} real sentences, "
        f"{e['tokens_mean']} tokens on average (max {e['tokens_max']}):",
        "",
        "| variant | texts/s |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in e["texts_per_s"].items()),
        "",
        f"`generate` (SmolLM2-135M, greedy, {g['runs']} runs of up to {g['max_new_tokens']} tokens): "
        f"time to first token {g['ttft_ms_median']} ms, {g['tokens_per_s_median']} tokens/s (medians); "
        f"load {g['load_s']} s.",
        "",
        "GPU: not measured (no GPU machine was lent).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gen-runs", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    cache = args.cache_dir or Path(os.environ.get("RTAI_WORKER_MODEL_CACHE_DIR", ModelOptions().cache_dir))
    options = ModelOptions(device="cpu", cache_dir=Path(cache).expanduser())
    result = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "embed": bench_embed(options, args.texts, args.repeats),
        "generate": bench_generate(options, args.gen_runs, args.max_new_tokens),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "models.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = markdown(result)
    (args.out / "models.md").write_text(md, encoding="utf-8")
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
