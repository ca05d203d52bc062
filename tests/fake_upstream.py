"""A stand-in model server for router tests: answers v2 infer after a configurable delay.

``python -m tests.fake_upstream --port P --delay 2.0 --score 0.5 --version slow``
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web


def make_app(delay: float, score: float, version: str) -> web.Application:
    async def infer(request: web.Request) -> web.Response:
        doc = await request.json()
        rows = int(doc["inputs"][0]["shape"][0])
        await asyncio.sleep(delay)
        return web.json_response(
            {
                "model_name": request.match_info["name"],
                "model_version": version,
                "outputs": [
                    {
                        "name": "probability",
                        "datatype": "FP32",
                        "shape": [rows],
                        "data": [score] * rows,
                    }
                ],
            },
            headers={"x-turnout-model-version": version},
        )

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v2/models/{name}/infer", infer)
    app.router.add_get("/readyz", ready)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--score", type=float, default=0.5)
    parser.add_argument("--version", default="fake")
    args = parser.parse_args()
    web.run_app(
        make_app(args.delay, args.score, args.version), host="127.0.0.1", port=args.port, print=None
    )
