#!/usr/bin/env bash
# Drive `cotrain watch` in a real 80x24 terminal (a detached tmux session) and save one frame.
#
#   experiments/dashboard_tmux.sh [RUN_DIR] [OUT]
#
# RUN_DIR defaults to tests/data/recorded-run, OUT to docs/dashboard-frame.txt. The script
# polls `tmux capture-pane` until the frame is drawn (30 s deadline), checks that it fits
# 80x24, sends Ctrl-C and checks that the dashboard exits. It uses its own tmux server socket,
# so it never touches your tmux sessions.
set -euo pipefail
export LANG=C.UTF-8  # tmux draws the box and block characters only in a UTF-8 locale

cd "$(dirname "$0")/.."
RUN_DIR=${1:-tests/data/recorded-run}
OUT=${2:-docs/dashboard-frame.txt}
COTRAIN=${COTRAIN:-.venv/bin/cotrain}
SOCKET="cotrain-dash-$$"
SESSION=dash
TMUX_CMD=(tmux -L "$SOCKET" -f /dev/null)

command -v tmux >/dev/null || { echo "tmux is not installed" >&2; exit 2; }
cleanup() { "${TMUX_CMD[@]}" kill-server 2>/dev/null || true; }
trap cleanup EXIT

"${TMUX_CMD[@]}" new-session -d -s "$SESSION" -x 80 -y 24 "$COTRAIN watch $RUN_DIR --refresh-s 0.5"

frame=""
for _ in $(seq 1 300); do
  frame=$("${TMUX_CMD[@]}" capture-pane -p -t "$SESSION" 2>/dev/null || true)
  if grep -q "SLO" <<<"$frame" && grep -q "─ events" <<<"$frame"; then
    break
  fi
  sleep 0.1
done
grep -q "─ events" <<<"$frame" || { echo "no frame within 30 s; last capture:" >&2; echo "$frame" >&2; exit 1; }

lines=$(wc -l <<<"$frame")
widest=$(LC_ALL=C.UTF-8 wc -L <<<"$frame")  # display columns, not bytes
[ "$lines" -le 24 ] || { echo "frame has $lines lines (> 24)" >&2; exit 1; }
[ "$widest" -le 80 ] || { echo "frame has a line of $widest columns (> 80)" >&2; exit 1; }

mkdir -p "$(dirname "$OUT")"
printf '%s\n' "$frame" >"$OUT"

"${TMUX_CMD[@]}" send-keys -t "$SESSION" C-c
for _ in $(seq 1 100); do
  "${TMUX_CMD[@]}" has-session -t "$SESSION" 2>/dev/null || break
  sleep 0.1
done
if "${TMUX_CMD[@]}" has-session -t "$SESSION" 2>/dev/null; then
  echo "the dashboard did not exit on Ctrl-C" >&2
  exit 1
fi
echo "frame ($lines lines, at most $widest columns) written to $OUT; Ctrl-C exited the dashboard"
