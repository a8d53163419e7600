"""`python -m rtai_worker`: one worker process (scale with replicas). `python -m rtai_worker declare`: record the
configured tasks in the registry, remove the retired ones, and exit. `python -m rtai_worker forget TASK...`: remove
tasks from the registry (`rtai_worker.declare`).

Exit codes: 0 done, 1 crashed, 2 bad usage or settings, 3 refused (a model or task configuration it cannot serve), 4 a
model call hung, 5 a task to remove is still served by a live worker (left alone; run again once its workers are
gone)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable

from pydantic import ValidationError

from rtai_telemetry.logging import configure_logging, get_logger
from rtai_telemetry.tracing import setup_tracing, shutdown_tracing
from rtai_transport import TaskConfigConflict
from rtai_worker.declare import declare, forget
from rtai_worker.model_threads import ModelCallHung
from rtai_worker.models import ModelSpecError
from rtai_worker.run import Worker
from rtai_worker.settings import WorkerSettings


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (Linux, macOS): cheaper Redis round trips and thread hand-offs."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["declare"]) and not (args[:1] == ["forget"] and len(args) > 1):
        sys.stderr.write(f"usage: python -m rtai_worker [declare | forget TASK...] (got {' '.join(args)!r})\n")
        return 2
    try:
        settings = WorkerSettings()
    except ValidationError as e:
        sys.stderr.write(f"invalid worker settings:\n{e}\n")
        return 2
    configure_logging(json=settings.log_json, level=settings.log_level)
    if args == ["declare"]:
        try:
            done = asyncio.run(declare(settings))
        except ModelSpecError as e:
            get_logger("rtai_worker").error("worker.refused", reason=str(e))
            return 3
        return 0 if done else 5
    if args[:1] == ["forget"]:
        return 0 if asyncio.run(forget(settings, args[1:])) else 5
    setup_tracing("rtai-worker")
    log = get_logger("rtai_worker")
    worker: Worker | None = None
    runner = asyncio.Runner(loop_factory=_loop_factory())
    code = 1
    try:
        worker = Worker(settings)
        runner.run(worker.run())
        code = 0
    except (ModelSpecError, TaskConfigConflict) as e:
        log.error("worker.refused", reason=str(e))
        code = 3
    except ModelCallHung as e:
        log.error("worker.exiting_after_hung_model_call", reason=str(e))
        code = 4
    except BaseException:
        if worker is not None and worker.model_calls_running():
            log.exception("worker.crashed")  # leaving with os._exit below would not print the traceback
        raise
    finally:
        shutdown_tracing()
        if worker is not None and (calls := worker.model_calls_running()):
            # A batch the grace period cut off computes on in its thread (its jobs were handed back). Closing the loop
            # and exiting would join that thread, holding the pod past its grace period for nothing: leave now.
            log.warning("worker.left_running_model_calls", calls=calls)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        runner.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
