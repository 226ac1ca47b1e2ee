"""Fake Jetson command-line tools for tests, built from real artefacts.

The fake `nvpmodel` reads a real nvpmodel.conf with its own small regexes (independent of the
parser under test), keeps the current mode in a state file, appends every call to a log, and
behaves like the real tool where it matters:
- `-q` prints `NV Power Mode: <NAME>` and the id on the next line (the format jtop parses);
- `-m N` to a mode whose TPC/FBP power-gating masks differ prints the reboot prompt and reads
  stdin; only `YES` "reboots" (recorded in the log). Anything else leaves the mode unchanged.
The prompt wording follows reports of the real tool; cotrain only relies on it containing
"reboot" and "YES".

`deny_switch` makes `-m` fail as it does for a user without the right to write the mode's
sysfs files: the given text (e.g. "Permission denied" or "Operation not permitted", the
strerror of EACCES and EPERM) on stderr and exit status 1, the mode unchanged; `-q` still
answers. ASSUMPTION: the exact wording of the real tool's refusal is not in the fixtures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NVPMODEL_SCRIPT = r"""#!{python}
import json, re, sys, pathlib
CONF = pathlib.Path({conf!r}).read_text(errors="replace")
STATE = pathlib.Path({state!r})
LOG = pathlib.Path({log!r})
PROMPT_ALWAYS = {prompt_always!r}
DENY_SWITCH = {deny_switch!r}
modes, current_id = {{}}, None
for line in CONF.splitlines():
    line = line.split("#", 1)[0]
    m = re.search(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+?)\s*>", line)
    if m:
        current_id = int(m.group(1))
        modes[current_id] = {{"name": m.group(2), "tpc": None, "fbp": None}}
        continue
    m = re.match(r"\s*(TPC|FBP)_POWER_GATING\s+\w+\s+(\d+)", line)
    if m and current_id is not None:
        modes[current_id][m.group(1).lower()] = int(m.group(2))
with LOG.open("a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
state = json.loads(STATE.read_text())
args = sys.argv[1:]
if args[:1] == ["-q"]:
    mode = modes[state["mode"]]
    print("NV Power Mode: " + mode["name"])
    print(state["mode"])
    sys.exit(0)
if args[:1] == ["-m"] and DENY_SWITCH is not None:
    print("NVPM ERROR: failed to set power mode " + args[1] + ": " + DENY_SWITCH, file=sys.stderr)
    sys.exit(1)
if args[:1] == ["-m"] and len(args) > 1:
    target = int(args[1])
    if target not in modes:
        print("NVPM ERROR: Invalid power mode " + args[1])
        sys.exit(1)
    cur, new = modes[state["mode"]], modes[target]
    if PROMPT_ALWAYS or (cur["tpc"], cur["fbp"]) != (new["tpc"], new["fbp"]):
        print("NVPM WARN: Reboot required for changing to this power mode: " + str(target))
        print("NVPM WARN: DO YOU WANT TO REBOOT NOW? enter YES/yes to confirm:", flush=True)
        answer = sys.stdin.readline().strip()
        if answer.upper() == "YES":
            with LOG.open("a") as f:
                f.write(json.dumps(["REBOOTED"]) + "\n")
            STATE.write_text(json.dumps({{"mode": target}}))
        sys.exit(0)
    STATE.write_text(json.dumps({{"mode": target}}))
    sys.exit(0)
print("NVPM ERROR: unsupported arguments " + " ".join(args))
sys.exit(2)
"""

TEGRASTATS_SCRIPT = r"""#!{python}
import sys, time
lines = [l for l in open({lines!r}).read().splitlines() if l.strip()]
interval_s = int(sys.argv[sys.argv.index("--interval") + 1]) / 1000 if "--interval" in sys.argv else 1.0
i = 0
while True:
    print(lines[i % len(lines)], flush=True)
    i += 1
    time.sleep(interval_s)
"""


class FakeNvpmodel:
    def __init__(
        self,
        directory: Path,
        conf: Path,
        mode_id: int,
        prompt_always: bool = False,
        deny_switch: str | None = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "nvpmodel"
        self.state = directory / "nvpmodel-state.json"
        self.log = directory / "nvpmodel-calls.jsonl"
        self.state.write_text(json.dumps({"mode": mode_id}))
        self.path.write_text(
            NVPMODEL_SCRIPT.format(
                python=sys.executable,
                conf=str(conf),
                state=str(self.state),
                log=str(self.log),
                prompt_always=prompt_always,
                deny_switch=deny_switch,
            )
        )
        self.path.chmod(0o755)

    @property
    def mode_id(self) -> int:
        return int(json.loads(self.state.read_text())["mode"])

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def switches(self) -> list[int]:
        return [int(c[1]) for c in self.calls() if c[:1] == ["-m"]]


def fake_tegrastats(directory: Path, lines_file: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tegrastats"
    path.write_text(TEGRASTATS_SCRIPT.format(python=sys.executable, lines=str(lines_file)))
    path.chmod(0o755)
    return path
