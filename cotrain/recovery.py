"""Accounting for the requests a dead inference process took with it.

The load generator lives inside the inference process, so when that process dies (SIGKILL, OOM,
a segfault in a kernel) the requests it had queued, or was executing, leave no record. They are
not lost to us: the arrival schedule is a pure, seeded function of the config (arrivals.py), and
request ids are positions in it. So the runtime replays the schedule, and every request that
should have arrived by the moment the replacement takes over but has no record gets a `failed`
row: "worker died" if it arrived while the dead process owned it, "service restarting" if it
arrived while no process was serving. The replacement then starts at the first id not yet
accounted for, so `arrived == served + failed + shed` holds across any number of restarts.

A process killed mid-write can leave a torn last line; it is cut off before anything is appended,
so the next row does not fuse with the fragment (readers already skip a torn last line).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cotrain.records import REQUEST_COLUMNS, CsvAppender, read_csv_rows

NS_PER_S = 1_000_000_000
DIED = "worker died"
RESTARTING = "service restarting"


def cut_torn_tail(path: Path) -> int:
    """Truncate `path` after its last complete line. Returns the number of bytes removed."""
    if not path.exists():
        return 0
    with path.open("rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return 0
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        return len(data) - keep


@dataclass(frozen=True)
class LostRequests:
    rows: list[tuple[object, ...]]  # requests.csv rows, outcome "failed"
    next_request_id: int  # the first id the replacement process serves
    died: int  # arrived while the dead process owned them
    during_restart: int  # arrived while nothing was serving


def lost_requests(
    recorded_ids: set[int],
    offsets_s: Iterator[float],
    t0_ns: int,
    first_id: int,
    died_at_s: float,
    until_s: float,
) -> LostRequests:
    """Failed rows for every scheduled request from `first_id` up to `until_s` (and up to the last
    recorded id) that has no record.

    `offsets_s` is the arrival schedule from id 0 (the same iterator the process consumed);
    `died_at_s` and `until_s` are offsets from t0: when the death was seen, and when the
    replacement takes over (or the run stopped).
    """
    rows: list[tuple[object, ...]] = []
    died = restarting = 0
    next_id = first_id
    last_recorded = max(recorded_ids, default=-1)  # a gap below a recorded id is a loss whatever the time
    for request_id, offset_s in enumerate(offsets_s):
        if offset_s > until_s and request_id > last_recorded:
            next_id = request_id
            break
        next_id = request_id + 1
        if request_id < first_id or request_id in recorded_ids:
            continue
        reason = DIED if offset_s <= died_at_s else RESTARTING
        died += reason == DIED
        restarting += reason == RESTARTING
        arrival_s = f"{(t0_ns + round(offset_s * NS_PER_S)) / NS_PER_S:.6f}"
        rows.append((request_id, arrival_s, "", "", "", "", "", 0, "failed", reason))
    return LostRequests(rows, max(next_id, first_id), died, restarting)


def account_lost_requests(
    requests_csv: Path,
    offsets_s: Iterator[float],
    t0_ns: int,
    first_id: int,
    died_at_s: float,
    until_s: float,
) -> LostRequests:
    """Repair the record file of a dead inference process and append its lost requests."""
    cut_torn_tail(requests_csv)
    recorded: set[int] = set()
    for row in read_csv_rows(requests_csv):
        try:
            recorded.add(int(row["request_id"]))
        except (KeyError, ValueError):
            continue
    lost = lost_requests(recorded, offsets_s, t0_ns, first_id, died_at_s, until_s)
    if lost.rows:
        writer = CsvAppender(requests_csv, REQUEST_COLUMNS)
        try:
            writer.write_rows(lost.rows)
        finally:
            writer.close()
    return lost
