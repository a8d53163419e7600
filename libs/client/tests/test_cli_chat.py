"""`rtai chat` as a user runs it: a real process, its stdin a pipe, against a WebSocket server that only welcomes.

Ctrl-C must end the process while it waits for a line (the user has not pressed Enter), and end-of-input must end
the chat cleanly. Only the process boundary shows either: a hang lives in interpreter shutdown, after the command's
own code has returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.server import ServerConnection, serve

pytestmark = pytest.mark.integration


async def _welcome_only(ws: ServerConnection) -> None:
    hello = json.loads(await ws.recv())
    assert hello["type"] == "hello"
    await ws.send(json.dumps({"type": "welcome", "session": "s1", "gateway": "g1"}))
    with contextlib.suppress(Exception):  # until the client goes away, however it goes
        async for _ in ws:
            pass


@pytest.fixture
async def gateway_url() -> AsyncIterator[str]:
    async with serve(_welcome_only, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/ws"


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def _chat_at_its_prompt(url: str) -> asyncio.subprocess.Process:
    """`rtai chat`, started and waiting for the user's first line (its prompt printed)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rtai_client.cli",
        "chat",
        "--url",
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        # As from a terminal: a test run started in the background by a non-interactive shell ignores SIGINT, the
        # child would inherit that, and Python installs no KeyboardInterrupt handler for an ignored signal.
        preexec_fn=_sigint_default,
    )
    assert proc.stdout is not None
    seen = b""
    try:
        while not seen.endswith(b"generate> "):
            chunk = await asyncio.wait_for(proc.stdout.read(256), 20)
            assert chunk, f"chat ended before its prompt: {seen!r}"
            seen += chunk
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc


async def _exit_code(proc: asyncio.subprocess.Process, within_s: float) -> tuple[int, str]:
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), within_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"chat still running {within_s}s later")
    assert proc.returncode is not None
    return proc.returncode, stderr.decode(errors="replace")


@pytest.mark.timeout(40)
async def test_ctrl_c_ends_chat_while_it_waits_for_a_line(gateway_url: str) -> None:
    proc = await _chat_at_its_prompt(gateway_url)
    assert proc.stdin is not None  # kept open: the user has typed nothing, not even Ctrl-D
    proc.send_signal(signal.SIGINT)
    code, stderr = await _exit_code(proc, 5)
    assert code == 0, stderr
    assert "Fatal Python error" not in stderr  # a reader thread must not break interpreter shutdown
    proc.stdin.close()


@pytest.mark.timeout(40)
async def test_end_of_input_ends_chat(gateway_url: str) -> None:
    proc = await _chat_at_its_prompt(gateway_url)
    assert proc.stdin is not None
    proc.stdin.write(b"\n")  # an empty line is skipped: the prompt comes again
    proc.stdin.close()
    code, stderr = await _exit_code(proc, 10)
    assert code == 0, stderr
    assert "Traceback" not in stderr
