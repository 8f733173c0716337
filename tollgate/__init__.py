"""The ``tollgate`` command: it starts any part of Tollgate (no part imports this package)."""
