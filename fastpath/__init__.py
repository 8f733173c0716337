"""The compiled hot path of Tollgate.

Every module here has two forms.  Most are written once in Cython's pure-Python mode:
``fastpath/<name>.py`` runs interpreted, and ``setup.py`` compiles the same source, typed by
``fastpath/<name>.pxd``, into ``fastpath._compiled.<name>``.  ``http1`` is the exception: its
compiled form (``http1.pyx``) drives llhttp's C API and its interpreted twin (``http1.py``)
uses httptools over the same llhttp; tests feed both the same bytes.  This file is the one place that picks which form is live:

* ``TOLLGATE_NO_EXTENSIONS=1`` forces the interpreted form;
* otherwise the compiled form is used when *every* compiled module imports (a mix of forms
  would make profiles and bug reports ambiguous), else the interpreted form.

``IMPLEMENTATION`` says which form is live ("compiled" or "pure"); the gateway logs it at start
and exports it as a metric.  Callers import the names re-exported below, never the submodules,
so that they always get the live form.  Tests reach a given form with :func:`load`.

fastpath does no I/O, reads no clock and knows no asyncio: time and data are passed in.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

#: The modules of fastpath, each with a ``.pxd`` beside it (setup.py compiles exactly these;
#: from ``<name>.pyx`` when there is one, the ``.py`` being its interpreted twin).
MODULES = ("balancer", "http1", "limiter", "pathnorm", "router", "sdksign")

FORCED_PURE = os.environ.get("TOLLGATE_NO_EXTENSIONS", "").strip() not in ("", "0")


def load(name: str, compiled: bool) -> ModuleType:
    """Return fastpath module ``name`` in the requested form.

    Raises ImportError when the compiled form was asked for and is not built.
    """
    if name not in MODULES:
        raise ImportError(f"fastpath has no module {name!r}")
    if compiled:
        module = importlib.import_module(f"fastpath._compiled.{name}")
        if not module.__file__ or module.__file__.endswith(".py"):  # pragma: no cover
            raise ImportError(f"fastpath._compiled.{name} is not a compiled module")
        source = os.path.join(os.path.dirname(__file__), name + ".pyx")
        if not os.path.exists(source):
            source = source[:-1]
        if os.path.getmtime(source) > os.path.getmtime(module.__file__):
            # a forgotten rebuild must not run old code: rebuild with `pip install -e .`
            raise ImportError(f"fastpath._compiled.{name} is older than fastpath/"
                              f"{os.path.basename(source)}")
        return module
    return importlib.import_module(f"fastpath.{name}")


def compiled_available() -> bool:
    """True when every fastpath module has a compiled form that imports."""
    try:
        for name in MODULES:
            load(name, compiled=True)
    except ImportError:
        return False
    return True


def _live_modules() -> tuple[str, dict[str, ModuleType]]:
    use_compiled = not FORCED_PURE and compiled_available()
    forms = {name: load(name, compiled=use_compiled) for name in MODULES}
    return ("compiled" if use_compiled else "pure"), forms


IMPLEMENTATION, _LIVE = _live_modules()

# The names the rest of Tollgate uses, from the live form.
normalize_path = _LIVE["pathnorm"].normalize_path
PathError = _LIVE["pathnorm"].PathError
Router = _LIVE["router"].Router
RouteConflict = _LIVE["router"].RouteConflict
http1 = _LIVE["http1"]
RequestParser = http1.RequestParser
ResponseParser = http1.ResponseParser
request_head = http1.request_head
response_head = http1.response_head
sdksign = _LIVE["sdksign"]
limiter = _LIVE["limiter"]
balancer = _LIVE["balancer"]

__all__ = ["IMPLEMENTATION", "MODULES", "load", "compiled_available",
           "normalize_path", "PathError", "Router", "RouteConflict", "http1", "RequestParser",
           "ResponseParser", "request_head", "response_head", "sdksign", "limiter", "balancer"]
