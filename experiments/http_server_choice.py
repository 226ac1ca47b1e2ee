"""Why the HTTP front end is uvicorn with a raw ASGI app, not aiohttp: the two, side by side.

Each server answers POST /v2/models/m/infer (a 49 KB body, the size of a 1x3x64x64 FP32 image)
with a small JSON body, in its own process, and does nothing else. One client process, keep-alive
http.client, sends `--requests` requests at a constant `--rate` (latency), then as fast as it
can (throughput), against each server in turn, `--repeats` times, alternating. Medians printed.

    .venv/bin/python experiments/http_server_choice.py            # about 1 min
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

AIOHTTP = """
import sys
from aiohttp import web
async def infer(request):
    await request.read()
    return web.Response(body=b'{"model_name":"m","outputs":[]}', content_type="application/json")
app = web.Application(client_max_size=64 << 20)
app.router.add_post("/v2/models/m/infer", infer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""

UVICORN = """
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = b'{"model_name":"m","outputs":[]}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", http="httptools",
            loop="uvloop", access_log=False, interface="asgi3", lifespan="off")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)  # the server is starting in another process
    raise RuntimeError(f"nothing listens on {port}")


def measure(port: int, rate_per_s: float, requests: int) -> tuple[float, float, float]:
    """(p50 ms, p99 ms) at `rate_per_s`, then the closed-loop requests per second."""
    body = os.urandom(49152)
    conn = http.client.HTTPConnection("127.0.0.1", port)

    def one() -> None:
        conn.request(
            "POST", "/v2/models/m/infer", body=body, headers={"Content-Type": "application/octet-stream"}
        )
        conn.getresponse().read()

    for _ in range(100):
        one()
    latencies = []
    start = time.perf_counter()
    for i in range(requests):
        delay = start + i / rate_per_s - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = time.perf_counter()
        one()
        latencies.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter()
    for _ in range(requests):
        one()
    throughput = requests / (time.perf_counter() - t)
    conn.close()
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99)), throughput


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    servers = {}
    procs = []
    for name, code in (("uvicorn+httptools+uvloop (raw ASGI)", UVICORN), ("aiohttp", AIOHTTP)):
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(port)]))
        wait_listening(port)
        servers[name] = port
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in servers}
    try:
        for _ in range(args.repeats):
            for name, port in servers.items():
                results[name].append(measure(port, args.rate, args.requests))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    print(
        f"{args.requests} requests of 49 KB at {args.rate:g} req/s, then closed loop; "
        f"medians of {args.repeats}"
    )
    print("| server | p50 | p99 | closed-loop req/s |")
    print("|---|---|---|---|")
    for name, runs in results.items():
        p50, p99, rps = (float(np.median([r[k] for r in runs])) for k in range(3))
        print(f"| {name} | {p50:.3f} ms | {p99:.3f} ms | {rps:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
