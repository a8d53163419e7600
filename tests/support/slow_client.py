"""The socket of a client that reads little: what a slow reader looks like to the gateway, without tripping TCP on
loopback.

It is a plain socket with the kernel's own buffer sizing, and that is the point. Earlier versions fixed a small
receive buffer (`SO_RCVBUF`: 4 KB, then 64 KiB with 8 KiB segments) so the gateway would give up sooner, and once in
a few dozen runs a slow-reader test stalled for a minute or more: it measured TCP, not the gateway. The suspected
cause: a fixed buffer is locked, the kernel cannot grow it, and when the segments it promised room for outgrow it
(it counts their memory, not their payload) it squeezes its queue and, failing that, drops them; the gateway then
waits out a retransmission backoff that doubles to minutes. One run of the 1013 test with the fixed buffer showed
116 segments collapsed to make room (`nstat` TcpExtTCPRcvCollapsed); with the default buffer, none. The gateway's
own send buffer (up to 4 MB by Linux's defaults) is most of what fills before it gives up anyway: about 3 MB of
refusals, some 30,000 frames, a few seconds.
"""

from __future__ import annotations

import socket


def slow_reader_socket(port: int) -> socket.socket:
    """A connected loopback socket for a client that will not read (it does nothing to the buffers: see above)."""
    return socket.create_connection(("127.0.0.1", port))
