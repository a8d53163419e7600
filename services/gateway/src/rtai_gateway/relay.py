"""The relay between gateways: frames logged here for a session another gateway holds go to that gateway's reply
stream, and frames another gateway logged for a session held here are delivered to its socket."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rtai_protocol import Forward
from rtai_telemetry.logging import get_logger

if TYPE_CHECKING:
    from rtai_gateway.hub import Hub

log = get_logger("rtai_gateway.relay")


async def forward(hub: Hub, forwards: list[tuple[str, bytes]]) -> None:
    """Add frames to other gateways' reply streams. No MAXLEN (it could trim replies such a gateway has not read);
    a TTL, so that the stream of a gateway gone meanwhile, recreated here, expires."""
    async with hub.redis.pipeline(transaction=False) as pipe:
        for stream, msg in forwards:
            pipe.xadd(stream, {"m": msg})
            pipe.expire(stream, hub.settings.sessions.ttl_s)
        await pipe.execute()


async def tell(hub: Hub, request_id: str, finals: dict[str, bytes]) -> None:
    """Forward a final this gateway logged to the gateways that track its request too. A request taken over with
    its session still runs for the gateway that admitted it (its replies go there): one ended here (a cancel, a
    deadline) is ended there too, or that gateway would hold it, and its user's slot, until the deadline (a
    cancelled job sends no reply). And a session resumed on another gateway meanwhile: its holder tracks the
    request, and its socket waits for the final."""
    try:
        await hub.forward(list(finals.items()))
    except Exception as e:  # those gateways end it at its deadline, as before
        log.warning("final.untold", request_id=request_id, error=type(e).__name__)


def deliver(hub: Hub, fwd: Forward) -> None:
    """A frame another gateway logged for a session this gateway now holds (it took the session over)."""
    session = hub.sessions.get(fwd.session)
    if session is not None:
        if fwd.final:
            session.deliver_final(fwd.request_id, fwd.seq, fwd.frame.encode(), repeat=fwd.repeat)
        else:
            session.deliver(fwd.seq, fwd.frame.encode())
    if fwd.final:
        p = hub.pending.get((fwd.owner, fwd.request_id))
        if p is not None:
            hub.end(p)  # its outcome is counted by the gateway that logged it
