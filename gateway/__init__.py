"""The data plane of Tollgate.

Its protocol and pipeline classes (``exchange``, ``http.server``, ``http.upstream``,
``backends.http``, ``metrics``, ``pipeline``) are written in Cython's pure-Python mode and
typed by the ``.pxd`` beside each; ``setup.py`` compiles them in place, so the compiled module
shadows its source.  They run interpreted, from their ``.py`` sources, when

* ``fastpath`` runs interpreted (``TOLLGATE_NO_EXTENSIONS=1``, or not built): one switch for
  the whole hot path, never a mix;
* or a compiled module is older than its source (a forgotten rebuild must not run old code;
  rebuild with ``pip install -e .``).

``IMPLEMENTATION`` says which form of the gateway's own classes is live.
"""
from __future__ import annotations

import importlib.machinery as _machinery
import logging as _logging
import os as _os
import sys as _sys

import fastpath as _fastpath

_HERE = _os.path.dirname(_os.path.abspath(__file__))


def _compiled_modules():
    """(source, compiled file or None) for every module that has a .pxd."""
    out = []
    for root, dirs, files in _os.walk(_HERE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".pxd"):
                stem = name[:-4]
                built = [f for f in files if f.startswith(stem + ".") and
                         f.endswith(tuple(_machinery.EXTENSION_SUFFIXES))]
                out.append((_os.path.join(root, stem + ".py"),
                            _os.path.join(root, built[0]) if built else None))
    return out


def _choose():
    if _fastpath.IMPLEMENTATION != "compiled":
        return "pure", ""
    stale = []
    for source, built in _compiled_modules():
        if built is None:
            return "pure", f"{_os.path.relpath(source, _HERE)} is not compiled"
        if _os.path.getmtime(source) > _os.path.getmtime(built):
            stale.append(_os.path.relpath(source, _HERE))
    if stale:
        return "pure", "compiled forms older than their sources: " + ", ".join(stale)
    return "compiled", ""


def _prefer_sources():
    """Make imports of gateway's submodules load .py sources, not the compiled files."""
    hook = _machinery.FileFinder.path_hook(
        (_machinery.SourceFileLoader, _machinery.SOURCE_SUFFIXES),
        (_machinery.SourcelessFileLoader, _machinery.BYTECODE_SUFFIXES))
    for root, dirs, _files in _os.walk(_HERE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        _sys.path_importer_cache[root] = hook(root)


IMPLEMENTATION, _WHY = _choose()
if IMPLEMENTATION == "pure":
    _prefer_sources()
    if _WHY:
        _logging.getLogger("tollgate.gateway").warning("gateway runs interpreted: %s", _WHY)
