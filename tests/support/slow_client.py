"""The socket of a client that reads little: what a slow reader looks like to the gateway, without tripping TCP on
loopback.

Loopback's segments are up to 64 KB. A receive buffer smaller than a segment (4 KB, say) makes the kernel drop
segments the advertised window allowed, and both directions fall into retransmission backoff, seconds long: the
client's sends then hang and the gateway's writes stall in the kernel, and a test measures that instead of the
gateway. 64 KiB (the kernel doubles it) holds whole segments and still fills within a few hundred frames. It did
not always: once in a few dozen runs the slow-reader chaos test stalled for ~110 s (about the sum of a
retransmission backoff) and its socket ended without the gateway's 1013 close. Suspected: a 64 KB segment meeting a
buffer that had less room left. The socket now also asks for segments of at most 8 KiB (`TCP_MAXSEG` before
connecting, advertised in its SYN), so a segment fits what is left of the buffer far more often.
"""

from __future__ import annotations

import socket

RECEIVE_BUFFER_BYTES = 65536
MAX_SEGMENT_BYTES = 8192


def slow_reader_socket(port: int) -> socket.socket:
    """A connected loopback socket with a small receive buffer (set before connecting, so the window fits it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, MAX_SEGMENT_BYTES)
    sock.connect(("127.0.0.1", port))
    return sock
