"""The build: `pip install -e .` on an unchanged tree compiles nothing (the README's run command
installs every time, and compiling the hot path takes about a minute)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

import fastpath
from tests.support.gateway import ROOT


@pytest.mark.slow
@pytest.mark.skipif(fastpath.IMPLEMENTATION != "compiled",
                    reason="the compiled forms are not built here: nothing to keep")
def test_installing_an_unchanged_tree_compiles_nothing():
    before = {p: p.stat().st_mtime for p in ROOT.glob("**/*.c") if ".work" not in p.parts}
    assert before, "no C sources: the tree was not built by setup.py"
    env = {k: v for k, v in os.environ.items() if k != "TOLLGATE_NO_EXTENSIONS"}
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-v", "-e", "."],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    compiled = [line for line in out.stdout.splitlines() if "gcc" in line or "cc1" in line]
    assert compiled == [], compiled[:3]
    assert {p: p.stat().st_mtime for p in before} == before, "C sources were generated again"
    assert fastpath.compiled_available()
