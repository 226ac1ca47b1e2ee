"""The floor under any front end that lives outside the process it feeds.

cotrain's front end runs outside the inference worker so that a dying worker cannot take the
clients' answers with it (docs/serving.md). That costs a round trip between two processes per
request: this script measures the bare round trip, with no cotrain code, as two Python
processes pass a 1×3×64×64 FP32 tensor (48 KiB) and its reply over a Unix socket at 200
messages/s, the rate of `cotrain bench overhead --ingress`:

- `pipe`: the receiver answers from the thread that received (the cheapest possible hop);
- `pipe+thread`: the receiver hands the message to a second thread through a condition
  variable and that thread answers, as a worker's batcher does.

Run: `python experiments/process_hop.py [--messages 2000] [--repeats 3]`. It prints p50 and p99
per variant as the median over interleaved repeats.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import statistics
import threading
import time
from multiprocessing.connection import Connection

import numpy as np

PAYLOAD = bytes(1 * 3 * 64 * 64 * 4)
RATE_PER_S = 200.0


def _echo(conn: Connection, handoff: bool) -> None:
    if not handoff:
        while True:
            message = conn.recv_bytes()
            if not message:
                return
            conn.send_bytes(message[:64])
    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()

    def answer() -> None:
        while True:
            message = inbox.get()
            if not message:
                return
            conn.send_bytes(message[:64])

    thread = threading.Thread(target=answer)
    thread.start()
    while True:
        message = conn.recv_bytes()
        inbox.put(message)
        if not message:
            thread.join()
            return


def _round_trips_us(handoff: bool, messages: int) -> list[float]:
    ours, theirs = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=_echo, args=(theirs, handoff))
    proc.start()
    samples = []
    period_s = 1.0 / RATE_PER_S
    next_s = time.monotonic()
    for i in range(messages + 100):
        next_s += period_s
        time.sleep(max(0.0, next_s - time.monotonic()))
        t0 = time.perf_counter_ns()
        ours.send_bytes(PAYLOAD)
        ours.recv_bytes()
        if i >= 100:  # the first hundred warm both processes up
            samples.append((time.perf_counter_ns() - t0) / 1e3)
    ours.send_bytes(b"")
    proc.join()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, list[tuple[float, float]]] = {"pipe": [], "pipe+thread": []}
    for _ in range(args.repeats):
        for name in figures:
            samples = np.array(_round_trips_us(name == "pipe+thread", args.messages))
            figures[name].append((float(np.percentile(samples, 50)), float(np.percentile(samples, 99))))
    print(f"round trip between two Python processes, 48 KiB out, 64 B back, {RATE_PER_S:.0f}/s")
    for name, runs in figures.items():
        p50 = statistics.median(r[0] for r in runs)
        p99 = statistics.median(r[1] for r in runs)
        print(f"{name:<12} p50 {p50:7.0f} us   p99 {p99:7.0f} us   (median of {len(runs)})")


if __name__ == "__main__":
    main()
