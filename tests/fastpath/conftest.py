"""Fixtures that run every fastpath test on both forms of a module: "pure" and "compiled".

The compiled form must be built (``python setup.py build_ext --inplace``); a missing or stale
build fails the compiled tests rather than quietly testing less.  ``TOLLGATE_NO_EXTENSIONS=1``
says there is deliberately no build: the compiled ids are then skipped.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import pytest

import fastpath

FORMS = ("pure", "compiled")
NO_EXTENSIONS = os.environ.get("TOLLGATE_NO_EXTENSIONS", "").strip() not in ("", "0")
BUILD_HINT = "build it: python setup.py build_ext --inplace"
FASTPATH_DIR = Path(fastpath.__file__).parent
#: The seed of the random (hypothesis) tests in this folder; TOLLGATE_TEST_SEED overrides it.
SEED = int(os.environ.get("TOLLGATE_TEST_SEED", "20240611"))


def pytest_report_header(config: pytest.Config) -> str:
    return (f"fastpath: live form {fastpath.IMPLEMENTATION}; random tests seed {SEED} "
            "(TOLLGATE_TEST_SEED to change)")


def load_form(name: str, form: str) -> ModuleType:
    """fastpath module ``name`` in form "pure" or "compiled", or skip / fail as the docstring says."""
    if form == "pure":
        return fastpath.load(name, compiled=False)
    if NO_EXTENSIONS:
        pytest.skip("TOLLGATE_NO_EXTENSIONS=1: the compiled form is not tested")
    try:
        module = fastpath.load(name, compiled=True)
    except ImportError as exc:
        pytest.fail(f"the compiled form of fastpath.{name} does not import ({exc}); {BUILD_HINT}")
    built = os.path.getmtime(module.__file__)
    # a module written in .pyx is compiled from it (its .py is the interpreted twin)
    pyx = FASTPATH_DIR / f"{name}.pyx"
    for source in (pyx if pyx.exists() else FASTPATH_DIR / f"{name}.py", FASTPATH_DIR / f"{name}.pxd"):
        if source.exists() and os.path.getmtime(source) > built:
            pytest.fail(f"the compiled form of fastpath.{name} is older than {source.name}; {BUILD_HINT}")
    return module


@pytest.fixture(params=FORMS)
def form(request: pytest.FixtureRequest) -> str:
    return request.param


def _module_fixture(name: str):
    """A fixture giving fastpath.<name> in each form (through ``form``)."""
    @pytest.fixture(name=f"{name}_mod")
    def module(form: str) -> ModuleType:
        return load_form(name, form)
    module.__doc__ = f"fastpath.{name} in each form."
    return module


pathnorm_mod = _module_fixture("pathnorm")
router_mod = _module_fixture("router")
http1_mod = _module_fixture("http1")
limiter_mod = _module_fixture("limiter")
