"""The least any front end outside the model's process can add to a bare echo server.

cotrain answers clients from a process the inference worker cannot take down with it
(docs/serving.md), so each request crosses to the worker and back. This script measures what
that crossing alone costs, with no cotrain code: the same minimal Open Inference Protocol echo
server twice, once answering in its own handler (`echo`) and once handing each request's
tensor bytes to a second process over a pipe and answering with what comes back (`echo+hop`).
Their difference, measured with the same tritonclient client at 200 req/s in alternating runs,
is the floor under `cotrain bench overhead --ingress`'s `overhead_ms`.

Run: `.venv/bin/python experiments/hop_floor.py [--requests 1500] [--repeats 3]` (about 2 min).
It prints p50 and p99 of each server and of the difference, medians over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np

SERVER = r"""
import json, multiprocessing as mp, sys, threading

def child(conn, parents_end):
    parents_end.close()  # so that the server's death closes the pipe and ends this process
    while True:
        try:
            data = conn.recv_bytes()
        except EOFError:
            return
        conn.send_bytes(data[:16])

protocol, hop = sys.argv[1], sys.argv[2] == "hop"
if hop:
    ours, theirs = mp.Pipe()
    # fork: a -c program has no module a spawned child could import `child` from
    mp.get_context("fork").Process(target=child, args=(theirs, ours), daemon=True).start()
    lock = threading.Lock()

def logits(raw):
    if not hop:
        return bytes(16)
    with lock:
        ours.send_bytes(bytes(raw))
        return ours.recv_bytes()

if __name__ == "__main__" and protocol == "grpc":
    from concurrent.futures import ThreadPoolExecutor
    import grpc
    from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pbg

    class Echo(pbg.GRPCInferenceServiceServicer):
        def ModelInfer(self, request, context):
            r = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
            o = r.outputs.add(); o.name = "logits"; o.datatype = "FP32"; o.shape.extend([1, 4])
            r.raw_output_contents.append(logits(request.raw_input_contents[0]))
            return r

    server = grpc.server(ThreadPoolExecutor(8), options=[("grpc.max_receive_message_length", 64 << 20)])
    pbg.add_GRPCInferenceServiceServicer_to_server(Echo(), server)
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    server.start()
    server.wait_for_termination()
elif __name__ == "__main__":
    import socket, uvicorn

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        header_len = int(dict(scope["headers"]).get(b"inference-header-content-length", b"0"))
        out = logits(body[header_len:])
        header = json.dumps({"model_name": "m", "outputs": [{"name": "logits", "datatype": "FP32",
            "shape": [1, 4], "parameters": {"binary_data_size": len(out)}}]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/octet-stream"),
            (b"inference-header-content-length", str(len(header)).encode())]})
        await send({"type": "http.response.body", "body": header + out})

    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(128)
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, loop="uvloop", http="httptools", log_level="warning", lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])
"""


def _latencies_ms(protocol: str, hop: bool, requests: int) -> list[float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, protocol, "hop" if hop else "plain"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    x = np.zeros((1, 3, 64, 64), np.float32)
    if protocol == "grpc":
        import tritonclient.grpc as client_lib

        client = client_lib.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = client_lib.InferInput("image", [1, 3, 64, 64], "FP32")
        tensor.set_data_from_numpy(x)
    else:
        import tritonclient.http as client_lib  # type: ignore[no-redef]

        client = client_lib.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = client_lib.InferInput("image", [1, 3, 64, 64], "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
    latencies = []
    next_s = time.monotonic()
    try:
        for i in range(requests + 100):
            next_s += 0.005  # 200 req/s, as cotrain bench overhead --ingress
            time.sleep(max(0.0, next_s - time.monotonic()))
            t0 = time.perf_counter()
            client.infer("m", [tensor])
            if i >= 100:  # the first hundred warm both processes up
                latencies.append((time.perf_counter() - t0) * 1e3)
    finally:
        client.close()
        proc.kill()
        proc.wait()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--protocols", default="grpc,http")
    args = parser.parse_args()
    for protocol in args.protocols.split(","):
        runs: dict[str, list[tuple[float, float]]] = {"echo": [], "echo+hop": []}
        for _ in range(args.repeats):
            for name in runs:
                samples = np.array(_latencies_ms(protocol, name == "echo+hop", args.requests))
                runs[name].append((float(np.percentile(samples, 50)), float(np.percentile(samples, 99))))
        figures = {
            name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
            for name, rs in runs.items()
        }
        for name, (p50, p99) in figures.items():
            print(f"{protocol:<5} {name:<9} p50 {p50:6.3f} ms  p99 {p99:6.3f} ms  (median of {args.repeats})")
        print(
            f"{protocol:<5} the hop adds p50 {figures['echo+hop'][0] - figures['echo'][0]:6.3f} ms"
            f"  p99 {figures['echo+hop'][1] - figures['echo'][1]:6.3f} ms"
        )


if __name__ == "__main__":
    main()
