"""The key of the audit log's body hashes.

The audit log keeps, per change, a hash of the body before and after -- never the body.  A plain
SHA-256 of a body would let a reader of the audit log (any read-only token, or a copy of the
store) confirm a guessed low-entropy secret: hash the body with the guess, compare.  So the
hashes are HMAC-SHA-256 with a key kept **outside the store** (:func:`control_plane.store.
body_hash`): the same body gives the same hash as long as the key is the same (across restarts,
and across the control planes sharing one PostgreSQL store, which must therefore share the key),
and nothing can be confirmed without the key.

Where the key comes from (:func:`load_key`), first found wins:

1. ``--audit-key-file FILE``: the file's content (stripped, at least 16 characters); generated
   (32 random bytes, hex, mode 0600) when the file does not exist;
2. ``$TOLLGATE_AUDIT_KEY``: the key itself (at least 16 characters);
3. the default file: beside the SQLite file (``<db>.audit-key``) for a SQLite store; in the
   working directory (``tollgate-audit.key``) for a PostgreSQL store -- control planes sharing
   a PostgreSQL store must be given one key (1 or 2).  Generated (0600) when missing.

A generated key is announced at start (a warning naming the file: keep it with backups of the
store, give it to every control plane of the store).  A lost key changes nothing stored: the
hashes written with it just cannot be compared with new ones any more.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

__all__ = ["ENV", "DEFAULT_FILE", "MIN_LENGTH", "default_key_file", "load_key"]

ENV = "TOLLGATE_AUDIT_KEY"
#: the default key file of a PostgreSQL store (in the working directory)
DEFAULT_FILE = "tollgate-audit.key"
MIN_LENGTH = 16


def default_key_file(store_url: str) -> Path:
    """``<db file>.audit-key`` for a ``sqlite:///`` URL, ``./tollgate-audit.key`` otherwise."""
    if store_url.startswith("sqlite:///"):
        db = Path(store_url[len("sqlite:///"):])
        return db.with_name(db.name + ".audit-key")
    return Path.cwd() / DEFAULT_FILE


def _generate(path: Path) -> bytes:
    key = secrets.token_hex(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:            # made meanwhile by another process: use that one
        return _read(path)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key.encode()


def _read(path: Path) -> bytes:
    key = path.read_text().strip()
    if len(key) < MIN_LENGTH:
        raise ValueError(f"audit key file {path}: the key must be at least {MIN_LENGTH} "
                         "characters")
    return key.encode()


def load_key(store_url: str, key_file: str | os.PathLike | None = None,
             environ: dict | None = None) -> tuple[bytes, list[str]]:
    """``(key, warnings)`` for the store at ``store_url`` (see the module).  ``warnings``: lines
    to show at start (a key generated, a key file others can read).  ValueError for a key that
    is too short or a file that cannot be read."""
    environ = os.environ if environ is None else environ
    warnings: list[str] = []
    if key_file is None and environ.get(ENV):
        key = environ[ENV].strip()
        if len(key) < MIN_LENGTH:
            raise ValueError(f"${ENV}: the audit key must be at least {MIN_LENGTH} characters")
        return key.encode(), warnings
    path = Path(key_file) if key_file is not None else default_key_file(store_url)
    try:
        if path.exists():
            key = _read(path)
            mode = path.stat().st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                warnings.append(f"the audit key file {path} can be read by others "
                                f"(mode {stat.S_IMODE(mode):o}): chmod 600 it")
            return key, warnings
        key = _generate(path)
    except OSError as exc:
        raise ValueError(f"audit key file {path}: {exc.strerror or exc}") from None
    warnings.append(f"generated the audit key {path} (the key of the audit log's hashes: keep "
                    "it with the store's backups; control planes sharing a store need the same "
                    f"one: --audit-key-file or ${ENV})")
    return key, warnings
