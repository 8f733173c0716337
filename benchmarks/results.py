"""Write one section of benchmarks/RESULTS.md, leaving the other sections as they are.

Each benchmark script owns a section delimited by ``<!-- begin:NAME -->`` / ``<!-- end:NAME -->``
and rewrites only that, so the proxy harness and the router micro-benchmark can run separately.
"""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = "# Benchmark results\n\nEach section says the command that produced it. Ratios are the figures to compare; absolute\nnumbers move with the machine's load.\n"


def command_line() -> str:
    """The command that is running, as a user would type it again."""
    return "python -m " + ("benchmarks." + Path(sys.argv[0]).stem) + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")


def write_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    begin, end = f"<!-- begin:{name} -->", f"<!-- end:{name} -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
