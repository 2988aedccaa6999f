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

# shellcheck source=perf/common.sh
source "$ROOT/perf/common.sh"

NATS_PORT=$(free_port)
OTHER=$((CPU == 0 ? 1 : 0))
taskset -c "$OTHER" "$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" >"$TMP/nats.log" 2>&1 &
PIDS+=($!); disown
sleep 0.5
ADMIN=$(free_port)
"$PULSE" -bootstrap -cluster perf -bpm "$BPM" -min-bpm 1 -max-bpm $((BPM > 600 ? BPM : 600)) \
  -nats "nats://127.0.0.1:$NATS_PORT" -admin-port "$ADMIN" -data-dir "$TMP/data" -cpu "$CPU" \
  -rt-priority 50 -mlock -spin-max-us 0 "${EXTRA[@]}" >"$TMP/pulse.log" 2>&1 &
PID=$!
PIDS+=($PID); disown
for _ in $(seq 1 100); do [[ "$(beats_total 2>/dev/null)" -gt 2 ]] 2>/dev/null && break; sleep 0.2; done
B0=$(beats_total)
perf record -q -o "$TMP/perf.data" -C "$CPU" -e sched:sched_switch -e raw_syscalls:sys_enter \
  -e raw_syscalls:sys_exit -- sleep "$SECONDS_ARG" 2>"$TMP/perf.err"
B1=$(beats_total)
echo "$("$PULSE" --version) at $BPM bpm, cpu $CPU, -spin-max-us 0 ${EXTRA[*]}; load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "(backbeat_beats_total rose by $((B1 - B0)) around the trace, which covers $SECONDS_ARG s plus perf's start)"
perf script -i "$TMP/perf.data" -F tid,cpu,time,event,trace 2>/dev/null | python3 "$ROOT/perf/loop_wakes.py" "$PID"
