"""fastpath's loader: which form is live, how a given form is reached, and that the compiled
form really is the typed one."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastpath

from .conftest import BUILD_HINT, NO_EXTENSIONS, load_form

REPO = Path(fastpath.__file__).resolve().parent.parent
PROBE = ("import fastpath; print(fastpath.IMPLEMENTATION, fastpath.Router.__module__, "
         "fastpath.normalize_path.__module__)")


def run_probe(**env_changes):
    env = {key: value for key, value in os.environ.items() if key != "TOLLGATE_NO_EXTENSIONS"}
    env.update(env_changes)
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_compiled_form_is_live_when_built_and_not_forced():
    if NO_EXTENSIONS:
        assert fastpath.IMPLEMENTATION == "pure"
        return
    if not fastpath.compiled_available():
        pytest.fail(f"fastpath is not compiled; {BUILD_HINT}")
    assert fastpath.IMPLEMENTATION == "compiled"
    assert fastpath.Router is fastpath.load("router", compiled=True).Router
    assert fastpath.normalize_path is fastpath.load("pathnorm", compiled=True).normalize_path
    assert fastpath.PathError is fastpath.load("pathnorm", compiled=True).PathError
    assert fastpath.RouteConflict is fastpath.load("router", compiled=True).RouteConflict


def test_no_extensions_forces_the_pure_form():
    assert run_probe(TOLLGATE_NO_EXTENSIONS="1") == ["pure", "fastpath.router", "fastpath.pathnorm"]


def test_without_the_variable_a_fresh_interpreter_picks_the_compiled_form():
    if NO_EXTENSIONS:
        pytest.skip("TOLLGATE_NO_EXTENSIONS=1: nothing is built")
    assert run_probe() == ["compiled", "fastpath._compiled.router", "fastpath._compiled.pathnorm"]
    # "0" and "" mean not forced.
    assert run_probe(TOLLGATE_NO_EXTENSIONS="0")[0] == "compiled"


@pytest.mark.parametrize("compiled", [False, True])
def test_unknown_module_is_an_import_error(compiled):
    with pytest.raises(ImportError, match="nope"):
        fastpath.load("nope", compiled=compiled)


@pytest.mark.parametrize("name", fastpath.MODULES)
def test_each_form_comes_from_its_own_file(name):
    pure = fastpath.load(name, compiled=False)
    assert pure.__name__ == f"fastpath.{name}"
    assert pure.__file__.endswith(".py")
    if NO_EXTENSIONS:
        pytest.skip("TOLLGATE_NO_EXTENSIONS=1: the compiled form is not tested")
    compiled = load_form(name, "compiled")
    assert compiled.__name__ == f"fastpath._compiled.{name}"
    assert compiled.__file__.endswith(".so")
    assert compiled is not pure


# The speed of the compiled form comes from its .pxd: C helper functions, typed indices, trie
# nodes as extension types with typed slots.  Cython finds the .pxd that types a module under the
# module's full name, so a build that compiles fastpath/<name>.py as fastpath._compiled.<name>
# without showing Cython fastpath/<name>.pxd under that name yields a compiled module that
# imports and passes every other test, and is barely faster.  These tests catch that.
TYPED_HELPERS = {
    "pathnorm": ("_is_clean", "_check_characters", "_decode_segment", "_normalize_slow"),
    "router": ("_walk", "_lookup", "_pick", "_host_key", "_next_slash", "_make_node"),
}
PXD_HINT = ("its .pxd was not applied: setup.py must let Cython find fastpath/{name}.pxd "
            "under the name fastpath._compiled.{name}")


@pytest.mark.parametrize("name", sorted(TYPED_HELPERS))
def test_compiled_form_is_typed_by_its_pxd(name):
    pure = load_form(name, "pure")
    compiled = load_form(name, "compiled")
    for helper in TYPED_HELPERS[name]:
        assert callable(getattr(pure, helper))
        # A cdef function is a C function: the compiled module has no Python attribute for it.
        assert not hasattr(compiled, helper), f"{helper} is a Python function: " + PXD_HINT.format(name=name)


def test_compiled_trie_node_has_typed_slots():
    compiled = load_form("router", "compiled")
    node = compiled._Node()
    assert not hasattr(node, "__dict__"), "_Node is a Python class: " + PXD_HINT.format(name="router")
    with pytest.raises(TypeError):
        node.children = ["not", "a", "dict"]
    with pytest.raises(TypeError):
        node.param = "not a node"
    # The interpreted twin takes anything: the types are the compiled form's alone.
    pure_node = load_form("router", "pure")._Node()
    pure_node.children = ["anything"]
    assert pure_node.children == ["anything"]
