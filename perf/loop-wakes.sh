#!/usr/bin/env bash
# perf/loop-wakes.sh — where the loop thread's CPU per beat goes in
# timer-only mode, per kind of wake (issue 24): the release `pulse` at BPM,
# `-spin-max-us 0`, pinned to CPU at SCHED_FIFO 50 with -mlock, its own
# nats-server; `perf record` of sched_switch and the syscall tracepoints on
# that core for SECONDS, attributed by perf/loop_wakes.py (beat wake,
# inbound — the echo of its own frame, PONGs —, writes, other).
#
#   perf/loop-wakes.sh [SECONDS=10] [BPM=600] [CPU=last core] [-- extra pulse flags]
#
# Needs perf (Debian linux-perf) and root for the tracepoints. Short on
# purpose: a SCHED_FIFO run on a shared machine. Binary: $PULSE_BINARY, else
# .build/release/pulse.
set -euo pipefail

SECONDS_ARG=${1:-10}
BPM=${2:-600}
CPU=${3:-$(($(nproc) - 1))}
shift $(($# < 3 ? $# : 3))
[[ "${1:-}" == "--" ]] && shift
EXTRA=("$@")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PULSE=${PULSE_BINARY:-$ROOT/.build/release/pulse}
[[ -x "$PULSE" ]] || { echo "no pulse binary: swift build -c release --product pulse (or set PULSE_BINARY)" >&2; exit 1; }
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
command -v perf >/dev/null || { echo "perf not installed (apt-get install linux-perf)" >&2; exit 1; }

TMP=$(mktemp -d /tmp/pulse-wakes.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
beats_total() {
  curl -s --max-time 5 "http://127.0.0.1:$ADMIN/metrics" | awk '/^backbeat_beats_total/ {s+=$2} END {printf "%d", s}'
}

NATS_PORT=$(free_port)
taskset -c 0 "$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" >"$TMP/nats.log" 2>&1 &
PIDS+=($!)
sleep 0.5
ADMIN=$(free_port)
"$PULSE" -bootstrap -cluster perf -bpm "$BPM" -min-bpm 1 -max-bpm $((BPM > 600 ? BPM : 600)) \
  -nats "nats://127.0.0.1:$NATS_PORT" -admin-port "$ADMIN" -data-dir "$TMP/data" -cpu "$CPU" \
  -rt-priority 50 -mlock -spin-max-us 0 "${EXTRA[@]}" >"$TMP/pulse.log" 2>&1 &
PID=$!
PIDS+=($PID)
for _ in $(seq 1 100); do [[ "$(beats_total 2>/dev/null)" -gt 2 ]] 2>/dev/null && break; sleep 0.2; done
B0=$(beats_total)
perf record -q -o "$TMP/perf.data" -C "$CPU" -e sched:sched_switch -e raw_syscalls:sys_enter \
  -e raw_syscalls:sys_exit -- sleep "$SECONDS_ARG" 2>"$TMP/perf.err"
B1=$(beats_total)
echo "pulse $("$PULSE" --version) at $BPM bpm, cpu $CPU, -spin-max-us 0 ${EXTRA[*]}; $((B1 - B0)) beats in $SECONDS_ARG s"
perf script -i "$TMP/perf.data" -F tid,cpu,time,event,trace 2>/dev/null | python3 "$ROOT/perf/loop_wakes.py" "$PID" $((B1 - B0))
