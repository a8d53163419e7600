"""B's ceiling: a model's own throughput at each batch size, called in a fresh process with no pipeline around it.

    python bench/model_alone.py SPEC [--sizes 32,1] [--seconds 5]

Prints one JSON object: batch size -> {"texts_per_s", "texts"}. The texts are the load generator's (what B sends),
each batch is one `predict` call as the worker makes it (tokenising, the runtime, pooling and the JSON-ready output
included), and the model loads as a worker loads it (the same spec resolution and model cache), so the figure is the
most the pipeline could deliver at that batch size on this machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # plugged models (`plugged_models:...`) live here

from rtai_client.loadgen import DEFAULT_TEXTS
from rtai_worker.engine import Model, ModelInput
from rtai_worker.models import create_model
from rtai_worker.models.build import default_cache_dir
from rtai_worker.models.options import ModelOptions


def measure(model: Model, size: int, seconds: float) -> dict[str, float]:
    texts = itertools.cycle(DEFAULT_TEXTS)
    batches = 0
    started = time.perf_counter()
    warm_until = started + min(1.0, seconds / 4)
    while True:
        model.predict([ModelInput(text=next(texts)) for _ in range(size)])
        now = time.perf_counter()
        if now < warm_until:
            started = now
            continue
        batches += 1
        if now - started >= seconds:
            return {"texts_per_s": round(batches * size / (now - started), 1), "texts": batches * size}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", help="a model spec, as in RTAI_WORKER_TASKS (e.g. minilm-embed)")
    parser.add_argument("--sizes", default="32,1", help="comma-separated batch sizes")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per batch size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    model = create_model(args.spec, ModelOptions(cache_dir=default_cache_dir()))
    model.load()
    model.warmup()
    print(json.dumps({size: measure(model, size, args.seconds) for size in sizes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
