"""Serving TLS client connections: uvloop's TLS server, with handshakes counted.

uvloop runs the handshake (the standard ``ssl`` module underneath) and calls the
ClientConnection's ``connection_made`` only once it is done; a failed handshake never reaches
any protocol of ours.  So the front context's ``sslobject_class`` is a subclass of
``ssl.SSLObject`` whose ``do_handshake`` counts what it sees: every handshake begun, and every
one OpenSSL refuses, by reason (``tollgate_tls_handshake_failures_total``), logged at debug level
only (a scanner must not fill the log).  Handshakes cut short by the peer (a close, a reset) or by
the handshake timeout are the ones begun that neither completed nor failed.  The handshake is
bounded by the request head timeout.
"""
from __future__ import annotations

import logging
import ssl
import sys

from ..tls import DirectSSLObject, failure_reason
from .server import ClientConnection

log = logging.getLogger("tollgate.gateway")


def counting_sslobject_class(worker):
    """An SSLObject class counting the handshakes of ``worker``'s TLS listener."""

    class CountedSSLObject(DirectSSLObject):

        def do_handshake(self):
            try:
                if not getattr(self, "_counted", False):
                    self._counted = True
                    worker.tls_handshakes_begun += 1
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise
            except ssl.SSLError as exc:
                reason = failure_reason(exc)
                worker.count_tls_failure(reason)
                log.debug("TLS handshake refused (%s): %s", reason, exc)
                raise

    return CountedSSLObject


#: how long a closing TLS connection waits for the peer's close_notify (uvloop's default, 30 s,
#: would hold a socket that long for every client that never answers it)
SHUTDOWN_TIMEOUT_S = 2.0


async def serve_tls(worker, sock):
    """The TLS listener's server: ClientConnections over TLS on ``sock``."""
    worker.tls_context.sslobject_class = counting_sslobject_class(worker)
    _quiet_bad_server_names(worker)
    return await worker.loop.create_server(
        lambda: ClientConnection(worker, True), sock=sock, backlog=4096, ssl=worker.tls_context,
        ssl_handshake_timeout=worker.limits.head_timeout_s,
        ssl_shutdown_timeout=SHUTDOWN_TIMEOUT_S)


def _quiet_bad_server_names(worker):
    """A server name that is not ASCII (SNI carries A-labels only) makes Python's ssl refuse the
    handshake before the SNI callback runs, reporting the decode error as an "unraisable"
    exception with a traceback: counted (``bad_server_name``) instead of logged, per handshake."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if (isinstance(unraisable.exc_value, UnicodeDecodeError)
                and isinstance(unraisable.object, bytes)):
            worker.count_tls_failure("bad_server_name")
            return
        previous(unraisable)

    sys.unraisablehook = hook
