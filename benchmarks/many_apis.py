"""Write a configuration document of N url-backend APIs (the reload and publish benchmarks'
input): ``python -m benchmarks.many_apis N OUT.json``.

Ten groups with a ``backend`` variable per environment; API i answers ``GET /svc<i>/items/{id}``
in RELEASE and TEST and forwards to ``http://#backend#/items/{id}``."""
from __future__ import annotations

import json
import sys


def document(n: int) -> dict:
    return {"version": 1, "environments": [{"name": "TEST"}],
            "groups": [{"name": f"g{i}", "variables": {"RELEASE": {"backend": "127.0.0.1:9001"},
                                                        "TEST": {"backend": "127.0.0.1:9002"}}}
                       for i in range(10)],
            "apis": [{"name": f"api-{i}", "group": f"g{i % 10}", "method": "GET",
                      "path": f"/svc{i}/items/{{id}}",
                      "backend": {"url": "http://#backend#/items/{id}"},
                      "environments": {"RELEASE": {}, "TEST": {}}} for i in range(n)]}


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[0].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    with open(args[1], "w") as f:
        json.dump(document(int(args[0])), f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
