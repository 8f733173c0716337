"""TLS termination: the configuration document's certificates as SSL contexts chosen by SNI.

Each certificate becomes one server ``ssl.SSLContext`` (TLS 1.2 and 1.3 only, ALPN
``http/1.1``).  The TLS listener's front context has no certificate of its own: its SNI callback
picks a certificate's context by the name the client asked for (an exact domain, then a
``*.example.com`` wildcard for one label), or the default certificate when the client sent no
name or an unknown one; with no default the handshake is refused (``unrecognized_name``).

The contexts live in a :class:`CertificateStore` that belongs to the configuration snapshot, so
a reload swaps the whole store at once: handshakes after it use the new certificates, connections
already open keep the context they were given.  Everything a user can get wrong (a file that
cannot be read, a malformed PEM, a key that does not match its certificate, an encrypted key) is
an error naming the field, found when the document is loaded, never at the first handshake.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import serialization

#: a certificate that expires sooner than this is warned about at load
EXPIRY_WARNING_S = 30 * 86400

# TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3's are OpenSSL's defaults)
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class DirectSSLObject(ssl.SSLObject):
    """An SSLObject whose ``read``, ``write`` and ``pending`` are the ``_ssl`` module's own
    methods, bound when it is made.  uvloop's TLS layer calls them once or more per record, and
    ``ssl.SSLObject``'s are Python wrappers that only pass the call on: a Python frame each
    (measured: ``python -m benchmarks.profile --https-backend``).  uvloop takes the methods
    right after creating the object, so they are set in ``_create``."""

    @classmethod
    def _create(cls, *args, **kwargs):
        self = super()._create(*args, **kwargs)
        inner = self._sslobj
        self.read = inner.read          # (same positional arguments: len[, buffer])
        self.write = inner.write
        self.pending = inner.pending
        return self


def _base_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # No session resumption: a session (or ticket) made for one name would resume under
    # another, and outlive a reload that replaced a certificate; every handshake is full.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    return ctx


def _is_inline(value: str) -> bool:
    return "-----BEGIN " in value


def resolve_path(value: str, base_dir: str) -> str:
    return value if os.path.isabs(value) else os.path.join(base_dir, value)


def _read_pem(value: str, base_dir: str, where: str, errors: list) -> bytes | None:
    if _is_inline(value):
        return value.encode()
    path = resolve_path(value, base_dir)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        errors.append(f"{where}: cannot read {path}: {exc.strerror or exc}")
        return None


class LoadedCertificate:
    __slots__ = ("name", "context", "not_after", "domains", "default")

    def __init__(self, name, context, not_after, domains, default):
        self.name = name
        self.context = context
        self.not_after = not_after      # POSIX time the leaf certificate expires
        self.domains = domains
        self.default = default


class CertificateStore:
    """The contexts of one configuration, by the name a client asks for."""

    def __init__(self, certificates: list[LoadedCertificate], warnings: list[str],
                 digest: bytes = b""):
        self.certificates = certificates
        self.warnings = warnings
        self.digest = digest        # of every PEM read: a renewed file makes a new version
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}    # "example.com" serves *.example.com
        self.default: ssl.SSLContext | None = None
        # any certificate verifying clients makes every handshake ask for a client certificate
        # (OpenSSL takes the verify mode from the listener's context, before the SNI switch)
        self.client_auth = any(c.context.tollgate_client_ca for c in certificates)
        for cert in certificates:
            for domain in cert.domains:
                name = domain.lower().rstrip(".")
                if name.startswith("*."):
                    self.wildcard[name[2:]] = cert.context
                else:
                    self.exact[name] = cert.context
            if cert.default:
                self.default = cert.context

    def context_for(self, server_name: str | None) -> ssl.SSLContext | None:
        if server_name and not server_name.startswith("*"):
            name = server_name.lower()
            if name.endswith("."):
                name = name[:-1]        # (one trailing dot: the root)
            ctx = self.exact.get(name)
            if ctx is not None:
                return ctx
            dot = name.find(".")
            if dot > 0:
                ctx = self.wildcard.get(name[dot + 1:])
                if ctx is not None:
                    return ctx
        return self.default

    def expiries(self) -> list[tuple[str, float]]:
        return [(c.name, c.not_after) for c in self.certificates]


def load_certificates(certificates, base_dir: str, now: float | None = None) -> CertificateStore:
    """Build the store of a document's ``certificates``; raise ValueError whose args are the
    errors, each naming its field (``certificates[0].key: ...``)."""
    errors: list[str] = []
    warnings: list[str] = []
    loaded = []
    digest = hashlib.sha256()
    now = datetime.datetime.now(datetime.timezone.utc).timestamp() if now is None else now
    for i, cert in enumerate(certificates):
        where = f"certificates[{i}]"
        cert_pem = _read_pem(cert.cert, base_dir, f"{where}.cert", errors)
        key_pem = _read_pem(cert.key, base_dir, f"{where}.key", errors)
        if cert_pem is None or key_pem is None:
            continue
        digest.update(cert_pem)
        digest.update(key_pem)
        try:
            chain = x509.load_pem_x509_certificates(cert_pem)
        except ValueError:
            errors.append(f"{where}.cert: not a PEM certificate")
            continue
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError:
            errors.append(f"{where}.key: an encrypted private key (give it unencrypted)")
            continue
        except ValueError:
            errors.append(f"{where}.key: not a PEM private key")
            continue
        except Exception as exc:   # an unsupported key type, say
            errors.append(f"{where}.key: cannot be used: {exc}")
            continue
        leaf = chain[0]
        key_bytes = _public_bytes(key.public_key())
        if _public_bytes(leaf.public_key()) != key_bytes:
            if any(_public_bytes(c.public_key()) == key_bytes for c in chain[1:]):
                errors.append(f"{where}.cert: the certificate of the key must come first, then "
                              "its intermediates (the chain is out of order)")
            else:
                errors.append(f"{where}.key: does not match the certificate of {where}.cert")
            continue
        try:
            context = _context_from(cert_pem, key_pem)
            context.tollgate_client_ca = False      # (read after the handshake, see below)
            if cert.client_ca is not None:
                ca_pem = _read_pem(cert.client_ca, base_dir, f"{where}.client_ca", errors)
                if ca_pem is None:
                    continue
                try:
                    x509.load_pem_x509_certificates(ca_pem)
                except ValueError:
                    errors.append(f"{where}.client_ca: not a PEM CA certificate")
                    continue
                digest.update(ca_pem)
                # verification after the SNI switch uses this context's store: this CA only
                # (optional at the handshake; a client without one is refused right after it)
                context.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
                context.verify_mode = ssl.CERT_OPTIONAL
                context.tollgate_client_ca = True
        except ssl.SSLError as exc:
            errors.append(f"{where}.cert: OpenSSL cannot read the certificate chain or key "
                          f"({exc.reason or exc}); PEM lines must not be indented")
            continue
        not_after = leaf.not_valid_after_utc.timestamp()
        if not_after <= now:
            warnings.append(f"{where}: certificate {cert.name!r} expired on "
                            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
        elif not_after - now < EXPIRY_WARNING_S:
            warnings.append(f"{where}: certificate {cert.name!r} expires on "
                            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, in "
                            f"{(not_after - now) / 86400:.0f} days")
        loaded.append(LoadedCertificate(cert.name, context, not_after, cert.domains, cert.default))
    if errors:
        raise ValueError(*errors)
    return CertificateStore(loaded, warnings, digest.digest())


def _public_bytes(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _context_from(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server context holding this certificate chain and key (OpenSSL reads them from files:
    written to a private directory for the call and removed at once)."""
    ctx = _base_context()
    with tempfile.TemporaryDirectory(prefix="tollgate-tls-") as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


def backend_context(tls, base_dir: str, where: str) -> ssl.SSLContext:
    """The client context for https backends with settings ``tls`` (a BackendTls, or None
    for the defaults: verification against the system CA store); raise ValueError whose args
    are the errors, each naming its field under ``where``."""
    errors: list[str] = []
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.sslobject_class = DirectSSLObject
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if tls is not None:
        if tls.ca_file is not None:
            path = resolve_path(tls.ca_file, base_dir)
            try:
                ctx.load_verify_locations(cafile=path)
            except OSError as exc:
                errors.append(f"{where}.ca_file: cannot read {path}: {exc.strerror or exc}")
            except ssl.SSLError:
                errors.append(f"{where}.ca_file: {path} holds no PEM CA certificate")
        if not tls.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if (tls.client_cert is None) != (tls.client_key is None):
            errors.append(f"{where}.client_key: client_cert and client_key go together")
        elif tls.client_cert is not None:
            cert = resolve_path(tls.client_cert, base_dir)
            key = resolve_path(tls.client_key, base_dir)
            try:
                ctx.load_cert_chain(cert, key)
            except OSError as exc:
                if isinstance(exc, ssl.SSLError):
                    errors.append(f"{where}.client_key: {cert} and {key} are not a matching "
                                  f"PEM certificate and key ({exc.reason or exc})")
                else:
                    errors.append(f"{where}.client_cert: cannot read {exc.filename or cert}: "
                                  f"{exc.strerror or exc}")
    if errors:
        raise ValueError(*errors)
    return ctx


def front_context(current_store) -> ssl.SSLContext:
    """The TLS listener's context: ``current_store()`` gives the live CertificateStore (or
    None); its SNI callback hands each handshake the context of the certificate asked for."""
    ctx = _base_context()

    def choose(sslobj, server_name, _ctx):    # (store.client_auth: see verify_clients)
        store = current_store()
        chosen = store.context_for(server_name) if store is not None else None
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = chosen
        return None

    ctx.sni_callback = choose
    return ctx


def verify_clients(front: ssl.SSLContext, store) -> None:
    """Ask every client of the listener for a certificate (optional at the handshake) when a
    certificate of ``store`` verifies clients; the gateway then refuses, after the handshake, a
    client of such a certificate that sent none (client_certificate_required)."""
    front.verify_mode = (ssl.CERT_OPTIONAL if store is not None and store.client_auth
                         else ssl.CERT_NONE)


def client_identity(ssl_object) -> tuple[bool, str | None]:
    """After a handshake: (allowed, the verified client's subject or None).  A client of a
    certificate that verifies clients must have presented one (OpenSSL has verified it against
    that certificate's client_ca)."""
    context = ssl_object.context
    if not getattr(context, "tollgate_client_ca", False):
        return True, None
    peer = ssl_object.getpeercert()
    if not peer:
        return False, None
    subject = ",".join(f"{k}={v}" for rdn in peer.get("subject", ()) for k, v in rdn)
    return True, subject


def certificate_files(certificates, base_dir: str) -> list[str]:
    """The files the certificates are read from (a reload reads them again when they change)."""
    out = []
    for cert in certificates:
        for value in (cert.cert, cert.key):
            if not _is_inline(value):
                out.append(resolve_path(value, base_dir))
    return out


# -- handshake failures, as the metric counts them ---------------------------------------------

def failure_reason(exc: BaseException) -> str:
    """A short, stable label for why a handshake failed (a metric label: bounded)."""
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "ssl_error").lower()
        if reason in _KNOWN_REASONS:
            return _KNOWN_REASONS[reason]
        return "other"
    return "other"


# OpenSSL's reason codes, folded into the labels the metric has
_KNOWN_REASONS = {
    "unsupported_protocol": "protocol_version",
    "tlsv1_alert_protocol_version": "protocol_version",
    "wrong_version_number": "not_tls",
    "http_request": "not_tls",
    "no_shared_cipher": "no_shared_cipher",
    "tlsv1_alert_unknown_ca": "client_rejected_certificate",
    "sslv3_alert_bad_certificate": "client_rejected_certificate",
    "sslv3_alert_certificate_unknown": "client_rejected_certificate",
    "tlsv13_alert_certificate_required": "client_certificate",
    "client_certificate_required": "client_certificate",
    "peer_did_not_return_a_certificate": "client_certificate",
    "certificate_verify_failed": "client_certificate",
    "callback_failed": "unknown_server_name",
    "tlsv1_unrecognized_name": "unknown_server_name",
    "no_application_protocol": "alpn",
}
# the labels the metric has: what OpenSSL refuses (handshakes the peer abandons, or that time
# out, are the ones begun that neither completed nor failed), and a server name that is not
# ASCII (refused by Python's ssl before any callback)
FAILURE_REASONS = tuple(sorted(set(_KNOWN_REASONS.values()) - {"closed"} |
                               {"bad_server_name", "other"}))
