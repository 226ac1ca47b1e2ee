"""Where a network request's time goes inside the inference worker, stage by stage.

The real worker code (InferenceService with its NetLink, the `noop` model, batch size 1) runs in
a spawned process; this process stands in for the front end and sends one 1x3x64x64 FP32
request every 5 ms over the same Unix-socket framing, 1,500 times, stamping each stage with the
system-wide monotonic clock. The first 100 are dropped as warm-up. Prints p50/p90/p99 per stage.

    .venv/bin/python experiments/ingress_worker_path.py        # about 20 s
"""

import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Listener
from pathlib import Path

import numpy as np

STAMPS_FILE = Path(tempfile.gettempdir()) / "cotrain-worker-path-stamps.json"
SOCKET = Path(tempfile.gettempdir()) / "cotrain-worker-path.sock"


def worker(address, key):
    from cotrain.worker import worker_setup

    worker_setup(1)
    import pathlib

    import torch

    from cotrain.config import parse_config
    from cotrain.overhead import _NullChannel
    from cotrain.workloads.inference import service as S
    from cotrain.workloads.models import NoOpModel

    cfg = parse_config(
        {
            "duration_s": 100,
            "workloads": {
                "inference": {
                    "model": {"name": "noop"},
                    "dataset": {"kind": "synthetic", "num_samples": 8, "num_classes": 4, "image_size": 64},
                    "slo_ms": 1000,
                    "batching": {"max_batch_size": 1, "max_queue_delay_ms": 0},
                    "ingress": {"grpc": "127.0.0.1:0"},
                }
            },
        }
    ).workloads.inference
    st = {}
    orig_tensor = S.NetLink._tensor

    def tensor(self, m):
        st.setdefault(m.request_id, {})["recv"] = time.monotonic_ns()
        t = orig_tensor(self, m)
        st[m.request_id]["tensor"] = time.monotonic_ns()
        return t

    S.NetLink._tensor = tensor
    orig_offer = S.BatchQueue.offer

    def offer(self, item, at):
        r = orig_offer(self, item, at)
        st.setdefault(item.request_id, {})["offered"] = time.monotonic_ns()
        return r

    S.BatchQueue.offer = offer
    orig_nb = S.BatchQueue.next_batch

    def nb(self, w, flush=False):
        b = orig_nb(self, w, flush=flush)
        for r in b:
            st.setdefault(r.request_id, {})["taken"] = time.monotonic_ns()
        return b

    S.BatchQueue.next_batch = nb
    orig_send = S.NetLink.send_results

    def send(self, recs):
        for r in recs:
            st.setdefault(r.request.request_id, {})["send"] = time.monotonic_ns()
        orig_send(self, recs)
        for r in recs:
            st[r.request.request_id]["sent"] = time.monotonic_ns()

    S.NetLink.send_results = send
    pool = [torch.zeros(3, 64, 64)]
    ch = _NullChannel()
    svc = S.InferenceService(
        cfg,
        pathlib.Path(tempfile.gettempdir()) / "cotrain-worker-path-requests.csv",
        ch,
        S.make_infer(NoOpModel(4), pool),
        "noop",
        iter(range(10**9)),
    )
    svc.net = S.NetLink.connect(address, key, "inference", "synthetic", "cpu")
    threading.Thread(target=svc.listen, daemon=True).start()

    def dump():
        time.sleep(15)
        STAMPS_FILE.write_text(json.dumps(st))

    threading.Thread(target=dump, daemon=True).start()
    svc.serve(time.monotonic_ns(), iter(()))


if __name__ == "__main__":
    from cotrain.ingress.wire import NetRequest

    key = b"k" * 32
    SOCKET.unlink(missing_ok=True)
    lst = Listener(str(SOCKET), family="AF_UNIX", authkey=key)
    p = mp.get_context("spawn").Process(target=worker, args=(str(SOCKET), key))
    p.start()
    conn = lst.accept()
    hello = conn.recv()
    data = np.zeros((1, 3, 64, 64), np.float32).tobytes()
    t_send = {}
    t_recv = {}
    res = {}
    for i in range(1500):
        time.sleep(0.005)
        t0 = time.monotonic_ns()
        t_send[i] = t0
        conn.send([NetRequest(i, t0, "FP32", (1, 3, 64, 64), data)])
        r = conn.recv()[0]
        t_recv[i] = time.monotonic_ns()
        res[i] = r
    time.sleep(12)
    st = json.loads(STAMPS_FILE.read_text())
    keys = ["recv", "tensor", "offered", "taken", "send", "sent"]
    legs = {
        k: []
        for k in [
            "send->recv",
            "recv->tensor",
            "tensor->offered",
            "offered->taken",
            "taken->batchstart",
            "batchstart->end",
            "end->send",
            "send->sent",
            "sent->client",
        ]
    }
    for i in range(100, 1500):
        s = st[str(i)]
        r = res[i]
        legs["send->recv"].append(s["recv"] - t_send[i])
        legs["recv->tensor"].append(s["tensor"] - s["recv"])
        legs["tensor->offered"].append(s["offered"] - s["tensor"])
        legs["offered->taken"].append(s["taken"] - s["offered"])
        legs["taken->batchstart"].append(r.start_ns - s["taken"])
        legs["batchstart->end"].append(r.end_ns - r.start_ns)
        legs["end->send"].append(s["send"] - r.end_ns)
        legs["send->sent"].append(s["sent"] - s["send"])
        legs["sent->client"].append(t_recv[i] - s["sent"])
    legs["round trip"] = [t_recv[i] - t_send[i] for i in range(100, 1500)]
    for k, v in legs.items():
        p50, p90, p99 = np.percentile(np.array(v) / 1e3, [50, 90, 99])
        print(f"{k:<18} p50 {p50:6.0f} p90 {p90:6.0f} p99 {p99:6.0f} us")
    p.kill()
    lst.close()
    sys.exit(0)
