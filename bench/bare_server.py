"""The serving baseline: a minimal aiohttp application answering fixed bytes.

    python bench/bare_server.py --port P --spec SPEC.json

``SPEC.json`` maps URL paths to ``{"file": PATH, "content_type": TYPE}``; each route answers
the file's bytes (read once at start) with that ``Content-Type``. No middleware, no
access log, no I/O per request: the ceiling of one aiohttp process on this machine, which
the worker's figure is divided by. Started and stopped by ``bench/run.py``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aiohttp import web


def make_app(spec: dict[str, dict[str, str]]) -> web.Application:
    app = web.Application()
    for path, entry in spec.items():
        body = Path(entry["file"]).read_bytes()
        content_type = entry["content_type"]

        async def handler(_request: web.Request, body: bytes = body, content_type: str = content_type) -> web.Response:
            return web.Response(body=body, headers={"Content-Type": content_type})

        app.router.add_get(path, handler)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    web.run_app(make_app(spec), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
