"""B: `embed` at saturation with dynamic batching vs `max_batch_size=1`, on two backends of the same MiniLM weights,
each also measured alone at the same batch sizes (its ceiling: how much of a gain is the model's, how much the
pipeline's).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import stack as st
from scenarios import GATEWAY_ENV, Run, measured, ws_url

from rtai_client.loadgen import run_bench

BACKENDS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("int8 ONNX", "minilm-embed", {}),
    ("torch fp32", "plugged_models:minilm_embed_torch_fp32", {"PYTHONPATH": str(st.REPO / "bench")}),
)
"""B's models: (label, model spec, worker env). The shipped CPU backend, and the same weights in torch fp32, which
gain ~4x from batches where the int8 graph gains ~1.4x (`bench/plugged_models.py` says why both)."""


B_SIZES = (32, 1)
"""B's batch sizes: dynamic batching up to this many, and one at a time."""


def _model_alone(run: Run, backend: str, spec: str, env: dict[str, str]) -> bool:
    """B's ceiling: the model's own throughput at each batch size (`bench/model_alone.py`, a fresh process, run
    while nothing else is), one row per size."""
    seconds = max(run.profile.b_seconds / 3, 0.5)
    argv = [sys.executable, str(st.REPO / "bench" / "model_alone.py"), spec, "--sizes", ",".join(map(str, B_SIZES))]
    proc = subprocess.run(
        [*argv, "--seconds", str(seconds)],
        capture_output=True,
        text=True,
        timeout=300 + 2 * seconds,
        env={**os.environ, **env},
        cwd=st.REPO,
    )
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        run.notes.append(f"B {backend} not measured: the model did not run alone ({why})")
        return False
    for size, figures in json.loads(proc.stdout).items():
        run.rows.append(
            {
                "scenario": "B",
                "what": f"embed ({backend}), the model alone, batch {size}",
                "req_s": figures["texts_per_s"],
                "ok": figures["texts"],
                "backend": backend,
                "batch": int(size),
                "alone": True,
            }
        )
    return True


def batching_scenario(run: Run) -> None:
    p = run.profile
    for backend, spec, env in BACKENDS:
        if not _model_alone(run, backend, spec, env):
            continue
        for size in B_SIZES:
            with st.Stack(run.workdir) as s:
                redis = s.start(st.redis())
                url = f"redis://127.0.0.1:{redis.port}/0"
                prefix = f"bench{uuid.uuid4().hex[:6]}"
                gw = s.start(st.gateway(url, prefix, **GATEWAY_ENV))
                try:
                    wk = s.start(
                        st.worker(url, prefix, tasks=f"embed={spec}", RTAI_WORKER_MAX_BATCH_SIZE=str(size), **env),
                        timeout=300,
                    )
                except (RuntimeError, TimeoutError) as e:
                    why = str(e).splitlines()[0]
                    run.notes.append(f"B {backend} not measured: the embed worker did not start ({why})")
                    break
                run_bench(ws_url(gw), connections=4, duration_s=1.0, warmup_s=0.0, tasks="embed")
                r, cpu = measured(
                    [gw, wk, redis],
                    run_bench,
                    url=ws_url(gw),
                    connections=p.b_connections,
                    duration_s=p.b_seconds,
                    warmup_s=p.warmup_s,
                    tasks="embed",
                    label=f"B {backend} batch {size}",
                )
                what = f"dynamic batching (max {size})" if size > 1 else "max_batch_size=1"
                run.add(
                    "B",
                    f"embed ({backend}), {p.b_connections} connections, {what}",
                    r,
                    cpu,
                    plot="batching",
                    backend=backend,
                    batch=size,
                )
