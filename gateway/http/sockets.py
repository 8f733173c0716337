"""Socket options the data plane sets on its transports."""
from __future__ import annotations

import socket
import struct

_LINGER_RESET = struct.pack("ii", 1, 0)     # SO_LINGER on, 0 s: close() sends a reset


def reset_on_close(transport):
    """Make closing ``transport`` send a reset (RST), not a FIN: how a peer is told that what
    it was reading is cut short, not ended (client connections, WebSocket tunnels)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
