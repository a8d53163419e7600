"""Build the converted model artifacts into the model cache once, ahead of serving.

    python -m rtai_worker.models.build [--cache-dir DIR] [minilm] [smollm2]

Workers build what they miss on first load too (safely, when several start at once): under a second for MiniLM
(no torch needed), ~20 s for SmolLM2 on 2 cores (needs torch); running this first (`make models`, or a Docker build
stage) keeps worker starts fast. The cache defaults to RTAI_WORKER_MODEL_CACHE_DIR, else
~/.cache/rtai, like the worker.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from rtai_worker.models.options import ModelOptions

ARTIFACTS = ("minilm", "smollm2")


def default_cache_dir() -> Path:
    env = os.environ.get("RTAI_WORKER_MODEL_CACHE_DIR")
    return Path(env).expanduser() if env else ModelOptions().cache_dir


def build(names: list[str], cache_dir: Path) -> dict[str, Path]:
    built: dict[str, Path] = {}
    for name in names:
        if name == "minilm":
            from rtai_worker.models.minilm import ensure_onnx

            built[name] = ensure_onnx(cache_dir)
        elif name == "smollm2":
            from rtai_worker.models.smollm2 import ensure_converted

            built[name] = ensure_converted(cache_dir)
        else:
            raise ValueError(f"unknown artifact {name!r}: choose from {', '.join(ARTIFACTS)}")
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=None, help="model cache (default: %(default)s)")
    parser.add_argument("artifacts", nargs="*", metavar="ARTIFACT", help=f"any of {ARTIFACTS} (default: all)")
    args = parser.parse_args(argv)
    cache_dir = (args.cache_dir or default_cache_dir()).expanduser()
    for name in args.artifacts or ARTIFACTS:
        started = time.perf_counter()
        path = build([name], cache_dir)[name]
        sys.stdout.write(f"{name}: {path} ({time.perf_counter() - started:.1f} s)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
