"""The `rtai` command line: run a local stack, send requests, chat, list tasks; `dlq` and `bench` in cli_ops.

Every command that talks to a gateway takes `--url` (env RTAI_URL, default ws://127.0.0.1:8000/v1/ws) and `--token`
(env RTAI_TOKEN).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from rtai_client import cli_ops
from rtai_client.client import Client
from rtai_client.errors import RtaiError
from rtai_client.stream import Stream

app = typer.Typer(help="rtai: real-time inference over WebSockets.", no_args_is_help=True, add_completion=False)
console = Console()
err = Console(stderr=True)

DEFAULT_URL = "ws://127.0.0.1:8000/v1/ws"
Url = Annotated[str, typer.Option("--url", envvar="RTAI_URL", help="Gateway WebSocket URL.")]
Token = Annotated[str | None, typer.Option("--token", envvar="RTAI_TOKEN", help="API key or JWT.", show_default=False)]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)  # a server's message is not markup
    return typer.Exit(code)


@app.command()
def run(
    port: Annotated[int, typer.Option(envvar="RTAI_PORT", help="Gateway port.")] = 8000,
    host: Annotated[str, typer.Option(envvar="RTAI_HOST", help="Gateway listen address.")] = "127.0.0.1",
    tasks: Annotated[
        str, typer.Option(envvar="RTAI_TASKS", help="Worker tasks, e.g. sentiment=vader,embed=minilm-embed.")
    ] = "sentiment=vader",
    redis_url: Annotated[
        str | None, typer.Option(envvar="RTAI_REDIS_URL", help="Use this Redis instead of starting one.")
    ] = None,
    redis_port: Annotated[
        int | None, typer.Option(envvar="RTAI_REDIS_PORT", help="Port for the Redis it starts (0: any free one).")
    ] = None,
) -> None:
    """Start Redis, a worker and a gateway (like `make run`); Ctrl-C stops them all."""
    from rtai_client.launcher import RunConfig
    from rtai_client.launcher import run as run_stack

    cfg = RunConfig.from_env()
    cfg.port, cfg.host, cfg.tasks, cfg.redis_url, cfg.redis_port = port, host, tasks, redis_url, redis_port
    raise typer.Exit(run_stack(cfg))


def _render(output: Any, task: str) -> None:
    if isinstance(output, dict) and "label" in output and "scores" in output:
        console.print(
            f"[bold]{output['label']}[/bold]  " + "  ".join(f"{k}={v:.3f}" for k, v in output["scores"].items())
        )
    elif isinstance(output, dict) and isinstance(output.get("embedding"), list):
        vec = output["embedding"]
        preview = ", ".join(f"{x:.4f}" for x in vec[:6])
        console.print(f"{len(vec)} dimensions: [{preview}, …]")
    elif isinstance(output, dict) and isinstance(output.get("text"), str):
        console.print(output["text"])
    else:
        console.print_json(json.dumps(output))


def _final_text(output: Any) -> str | None:
    """The whole text of a streamed answer as its result carries it (`{"text": ...}`, or the list of chunks)."""
    if isinstance(output, dict) and isinstance(output.get("text"), str):
        return str(output["text"])
    if isinstance(output, list) and all(isinstance(x, str) for x in output):
        return "".join(output)
    return None


async def _print_stream(s: Stream, show: bool = True) -> None:
    """Print chunks as they come, then make sure what was printed is the result's text, which is the answer.

    A Redis failover can lose a chunk for good: its index is skipped, never sent later (protocol.md), so a gap in
    `chunk.index` means the printed text misses a piece: a notice, then the whole text. Without a gap the text can
    still differ with nothing lost: a model holds back a token that ends inside a character, and stops streaming once
    a re-decode no longer extends what it sent (a lost last chunk leaves no gap either). Then the rest of the text is
    printed after the chunks when they are its beginning, or else the whole text again, without claiming a loss."""
    shown: list[str] = []
    missing = False
    expected = 0
    async for chunk in s:
        missing |= chunk.index > expected  # the client drops repeats: an index is never below the one expected
        expected = chunk.index + 1
        text = chunk.data if isinstance(chunk.data, str) else json.dumps(chunk.data)
        shown.append(text)
        if show:
            console.print(text, end="", markup=False, highlight=False)
    if not show:
        return
    streamed = "".join(shown)
    final = _final_text(s.result.output) if s.result is not None else None
    if final is None or final == streamed:
        console.print()
    elif missing:
        console.print()
        err.print("[yellow]part of the stream was lost on the way (a server failover); the whole answer:[/yellow]")
        console.print(final, markup=False, highlight=False)
    elif final.startswith(streamed):
        console.print(final[len(streamed) :], markup=False, highlight=False)  # the answer's end, streamed or not
    else:
        console.print()
        err.print("[dim]the final text differs from the streamed one; the answer:[/dim]")
        console.print(final, markup=False, highlight=False)


def _gateway_error(e: Exception) -> str:
    """One line for a failure to reach or keep the gateway (a TimeoutError has no message of its own)."""
    return str(e) or f"{type(e).__name__} talking to the gateway"


async def _streaming(c: Client, task: str) -> bool:
    try:
        return any(t.task == task and t.streaming for t in await c.tasks())
    except OSError:
        return False


@app.command()
def send(
    text: Annotated[str, typer.Argument(help="The input text.")],
    task: Annotated[str, typer.Option("--task", "-t", help="Task name (see `rtai tasks`).")] = "sentiment",
    url: Url = DEFAULT_URL,
    token: Token = None,
    deadline_ms: Annotated[int | None, typer.Option(help="Request deadline in ms.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="For generation: at most this many tokens.")] = None,
    raw: Annotated[bool, typer.Option("--json", help="Print the final frame as JSON.")] = False,
) -> None:
    """Send one request and print its result (streaming tasks print tokens as they arrive)."""

    async def go() -> None:
        async with Client(url, token=token) as c:
            opts: dict[str, Any] = {"deadline_ms": deadline_ms, "max_new_tokens": max_new_tokens}
            streamed = await _streaming(c, task)
            if streamed:
                s = c.stream(task, text, **opts)
                await _print_stream(s, show=not raw)
                result = s.result
            else:
                result = await c.infer(task, text, **opts)
            assert result is not None
            if raw:
                console.print_json(result.model_dump_json())
            elif not streamed:  # a stream's tokens are its output, printed above
                _render(result.output, task)

    try:
        asyncio.run(go())
    except (RtaiError, OSError) as e:
        raise fail(_gateway_error(e)) from None


@app.command()
def tasks(url: Url = DEFAULT_URL, token: Token = None) -> None:
    """List the tasks live workers serve."""

    async def go() -> None:
        c = Client(url, token=token)
        table = Table("task", "model", "streams", "max input", "workers")
        for t in await c.tasks():
            table.add_row(t.task, t.model, "yes" if t.streaming else "no", f"{t.max_input_chars:,}", str(t.workers))
        console.print(table)

    try:
        asyncio.run(go())
    except OSError as e:
        raise fail(f"cannot reach the gateway: {e}") from None


class _Lines:
    """Lines typed at the chat prompt, read by a daemon thread that hands each to the event loop.

    Not `asyncio.to_thread(input)`: a thread of the default executor blocked in `input()` keeps `asyncio.run` waiting
    (in `shutdown_default_executor`, with no timeout before Python 3.12) after Ctrl-C, until the user presses Enter.
    A daemon thread is not waited for. It reads the file descriptor itself (`os.read`) rather than through
    `sys.stdin`: at interpreter shutdown Python takes the lock of stdin's buffer, which a daemon thread blocked in
    `sys.stdin.readline()` holds, and aborts ("could not acquire lock ... possibly due to daemon threads"). A stdin
    without a descriptor (an in-memory one, as in tests) never blocks, so `readline` is safe there.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lines: asyncio.Queue[str | Exception | None] = asyncio.Queue()
        stdin = sys.stdin
        try:
            fd = stdin.fileno()
        except (OSError, ValueError):  # io.UnsupportedOperation is both
            reader = threading.Thread(target=self._read_stream, args=(stdin,), name="rtai-chat-input", daemon=True)
        else:
            encoding = stdin.encoding or "utf-8"
            reader = threading.Thread(target=self._read_fd, args=(fd, encoding), name="rtai-chat-input", daemon=True)
        reader.start()

    def _read_fd(self, fd: int, encoding: str) -> None:
        pending = b""
        try:
            while chunk := os.read(fd, 4096):
                *complete, pending = (pending + chunk).split(b"\n")
                for raw in complete:
                    if not self._hand_over(raw.decode(encoding, errors="replace")):
                        return
        except OSError as e:  # e.g. the terminal hung up
            self._hand_over(e)
            return
        if pending:  # a last line without a newline still counts, as with input()
            self._hand_over(pending.decode(encoding, errors="replace"))
        self._hand_over(None)

    def _read_stream(self, stdin: TextIO) -> None:
        try:
            for line in stdin:
                if not self._hand_over(line.rstrip("\n")):
                    return
        except Exception as e:  # the chat reports it instead of waiting forever
            self._hand_over(e)
            return
        self._hand_over(None)

    def _hand_over(self, line: str | Exception | None) -> bool:
        """False once the loop has closed (Ctrl-C while this thread waited): nobody wants more lines."""
        try:
            self._loop.call_soon_threadsafe(self._lines.put_nowait, line)
        except RuntimeError:
            return False
        return True

    async def read(self) -> str | None:
        """The next line without its newline, or None at end of input."""
        line = await self._lines.get()
        if isinstance(line, Exception):
            raise line
        return line


async def _answer(client: Client, task: str, line: str, max_new_tokens: int | None) -> None:
    """Answer one typed line; a failure is printed and the chat goes on, unless the client is closed for good."""
    try:
        if await _streaming(client, task):
            await _print_stream(client.stream(task, line, max_new_tokens=max_new_tokens))
        else:
            _render((await client.infer(task, line)).output, task)
    except RtaiError as e:
        if client.state == "closed":  # for good (reconnects exhausted, or refused): every later line would fail too
            raise fail(f"the connection to the gateway is closed: {e}") from None
        err.print(str(e), style="red", markup=False, highlight=False)


@app.command()
def chat(
    task: Annotated[str, typer.Option("--task", "-t", help="Task to chat with.")] = "generate",
    url: Url = DEFAULT_URL,
    token: Token = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="At most this many tokens per answer.")] = None,
) -> None:
    """Interactive: type a line, see the answer stream in. `/task NAME` switches task, Ctrl-D quits."""

    last = ["idle"]

    def state(s: str) -> None:
        # Only a reconnect after a drop is news: the socket opened again after the gateway's idle close is not.
        before, last[0] = last[0], s
        if s == "reconnecting":
            err.print("[yellow]connection lost: reconnecting…[/yellow]")
        elif s == "open" and before == "reconnecting":
            err.print(
                "[green]reconnected (session resumed)[/green]" if client.resumed else "[green]reconnected[/green]"
            )

    client = Client(url, token=token, on_state=state)

    async def go() -> None:
        nonlocal task
        await client.connect()
        console.print(f"[dim]connected to {url}; task {task}. /task NAME switches, Ctrl-D quits.[/dim]")
        lines = _Lines()
        try:
            while True:
                console.print(f"{task}> ", end="", markup=False, highlight=False)
                typed = await lines.read()
                if typed is None:
                    console.print()
                    return
                line = typed.strip()
                if not line:
                    continue
                if line.startswith("/task "):
                    task = line.split(None, 1)[1].strip()
                    continue
                await _answer(client, task, line, max_new_tokens)
        finally:
            await client.close()

    try:
        asyncio.run(go())
    except KeyboardInterrupt:
        console.print()
    except (RtaiError, OSError) as e:
        raise fail(_gateway_error(e)) from None


def main() -> None:
    app()


cli_ops.register(app)

if __name__ == "__main__":
    main()
