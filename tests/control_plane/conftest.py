"""Fixtures of the control plane's tests: one real PostgreSQL cluster for the whole session (a
fresh database per module or test: ``pg_server.create_database()``)."""
from __future__ import annotations

import pytest

from tests.support.postgres import PostgresServer, find_bindir

#: the store engines the app's tests run on
ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL server shared by every test of the session (skipped when not installed).
    Tests that stop and start it again leave it running."""
    if find_bindir() is None:
        pytest.skip("PostgreSQL is not installed (no initdb: Debian package postgresql)")
    server = PostgresServer().start()
    yield server
    server.stop()


def store_url(request, engine: str, directory) -> str:
    """A store URL for ``engine``: a SQLite file in ``directory``, or a fresh database."""
    if engine == "sqlite":
        return f"sqlite:///{directory}/cp.db"
    return request.getfixturevalue("pg_server").create_database()
