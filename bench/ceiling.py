"""The ceiling: the same VADER model called inline in a FastAPI WebSocket handler, no Redis, no worker.

It speaks the subset of the rtai protocol the load generator uses (hello -> welcome, infer -> result), parses client
frames with the same strict decoder as the gateway and encodes results with the same codec, so the difference to the
full pipeline is the pipeline: Redis, the worker hop, the session log, admission, metrics and logs.

    python bench/ceiling.py --port 8100 [--loop auto|asyncio|uvloop]

uvicorn runs with its defaults (`--loop auto` picks uvloop when installed, httptools, websockets-sansio), which is what
a user writing this by hand gets.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.responses import PlainTextResponse

from rtai_protocol import Error, Hello, Infer, ProtocolError, Result, Welcome, decode_client_frame, encode
from rtai_worker.engine import ModelInput
from rtai_worker.models import create_model
from rtai_worker.models.options import ModelOptions


def create_app() -> FastAPI:
    model = create_model("vader", ModelOptions(device="cpu"))
    model.load()
    model.warmup()
    app = FastAPI(docs_url=None, redoc_url=None)

    @app.get("/readyz")
    async def readyz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.websocket("/v1/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                text = await websocket.receive_text()
                try:
                    frame = decode_client_frame(text)
                except ProtocolError as e:
                    await websocket.send_text(encode(Error(id=e.request_id, code=e.code, message=e.message)).decode())
                    continue
                if isinstance(frame, Hello):
                    await websocket.send_text(encode(Welcome(session="inline", gateway="ceiling")).decode())
                elif isinstance(frame, Infer):
                    output = model.predict([ModelInput(text=frame.input)])[0]
                    await websocket.send_text(encode(Result(id=frame.id, output=output)).decode())
        except WebSocketDisconnect:
            return

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    args = parser.parse_args()
    uvicorn.run(create_app, factory=True, host=args.host, port=args.port, loop=args.loop, log_level="warning")


if __name__ == "__main__":
    main()
