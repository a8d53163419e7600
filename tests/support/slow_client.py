"""The socket of a client that reads little: what a slow reader looks like to the gateway, without tripping TCP on
loopback.

Loopback's segments are up to 64 KB. A receive buffer smaller than a segment (4 KB, say) makes the kernel drop
segments the advertised window allowed, and both directions fall into retransmission backoff, seconds long: the
client's sends then hang and the gateway's writes stall in the kernel, and a test measures that instead of the
gateway. 64 KiB (the kernel doubles it) holds whole segments and still fills within a few hundred frames.
"""

from __future__ import annotations

import socket

RECEIVE_BUFFER_BYTES = 65536


def slow_reader_socket(port: int) -> socket.socket:
    """A connected loopback socket with a small receive buffer (set before connecting, so the window fits it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    sock.connect(("127.0.0.1", port))
    return sock
