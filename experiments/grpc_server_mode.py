"""Whether grpc.aio costs more than grpc's thread-pool server: the same minimal echo, three ways.

cotrain's gRPC side is grpc.aio on the front end's event loop; the bare echo server that
`cotrain bench overhead --ingress grpc` compares against is grpc's synchronous server. This
script answers ModelInfer with a fixed 16-byte output from a synchronous server, from grpc.aio
on asyncio, and from grpc.aio on uvloop, each in its own process, driven by the same
tritonclient client at 200 req/s, alternating. It prints p50 and p99 latency and the server's
CPU (cores, from /proc/PID/stat), medians over the repeats.

Run: `.venv/bin/python experiments/grpc_server_mode.py [--requests 1500] [--repeats 3]` (about 90 s).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SERVER = r"""
import asyncio, sys
from concurrent.futures import ThreadPoolExecutor
import grpc
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pbg

def answer(request):
    r = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    o = r.outputs.add(); o.name = "logits"; o.datatype = "FP32"; o.shape.extend([1, 4])
    r.raw_output_contents.append(bytes(16))
    return r

class Sync(pbg.GRPCInferenceServiceServicer):
    def ModelInfer(self, request, context):
        return answer(request)

class Aio(pbg.GRPCInferenceServiceServicer):
    async def ModelInfer(self, request, context):
        return answer(request)

options = [("grpc.max_receive_message_length", 64 << 20)]
kind = sys.argv[1]
if kind == "sync":
    server = grpc.server(ThreadPoolExecutor(8), options=options)
    pbg.add_GRPCInferenceServiceServicer_to_server(Sync(), server)
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    server.start()
    server.wait_for_termination()
else:
    async def main():
        server = grpc.aio.server(options=options)
        pbg.add_GRPCInferenceServiceServicer_to_server(Aio(), server)
        print(server.add_insecure_port("127.0.0.1:0"), flush=True)
        await server.start()
        await server.wait_for_termination()
    if kind == "aio-uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    loop.run_until_complete(main())
"""
KINDS = ("sync", "aio-asyncio", "aio-uvloop")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks of 10 ms


def _measure(kind: str, requests: int) -> tuple[float, float, float]:
    import tritonclient.grpc as tg

    proc = subprocess.Popen([sys.executable, "-c", SERVER, kind], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    client = tg.InferenceServerClient(f"127.0.0.1:{int(proc.stdout.readline())}")
    tensor = tg.InferInput("image", [1, 3, 64, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 64, 64), np.float32))
    latencies: list[float] = []
    cpu0 = 0.0
    next_s = time.monotonic()
    try:
        for i in range(requests + 100):
            next_s += 0.005  # 200 req/s
            time.sleep(max(0.0, next_s - time.monotonic()))
            if i == 100:  # the first hundred warm up
                cpu0 = _cpu_s(proc.pid)
            t0 = time.perf_counter()
            client.infer("m", [tensor])
            if i >= 100:
                latencies.append((time.perf_counter() - t0) * 1e3)
        cores = (_cpu_s(proc.pid) - cpu0) / (requests / 200.0)
    finally:
        client.close()
        proc.kill()
        proc.wait()
    return float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99)), cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float, float]]] = {k: [] for k in KINDS}
    for _ in range(args.repeats):
        for kind in KINDS:
            runs[kind].append(_measure(kind, args.requests))
    for kind, rs in runs.items():
        p50, p99, cores = (statistics.median(r[i] for r in rs) for i in range(3))
        print(
            f"{kind:<12} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  CPU {cores:4.2f} cores"
            f"  (median of {args.repeats})"
        )


if __name__ == "__main__":
    main()
