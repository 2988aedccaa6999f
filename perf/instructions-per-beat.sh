#!/usr/bin/env bash
# perf/instructions-per-beat.sh — instructions (and cycles) per beat of the
# release `pulse` binary, idle, pinned to a core.
#
#   perf/instructions-per-beat.sh [SECONDS=10] [BPM=600] [CPU=last core]
#
# Uses `perf stat -e instructions,cycles -p PID` when the machine exposes the
# hardware counters (checked with `perf stat -e instructions true`); otherwise
# runs the pulse under `valgrind --tool=callgrind` (instructions only, counted
# exactly, so repeatable on a noisy machine; collection is switched on only
# for the measured window with callgrind_control). Beats come from the
# pulse's own backbeat_beats_total counter over the same window.
# Starts its own nats-server on a free 127.0.0.1 port; everything it starts is
# killed on exit. Binary: $PULSE_BINARY, else .build-bench/…/release/pulse,
# else .build/release/pulse.
set -euo pipefail

SECONDS_ARG=${1:-10}
BPM=${2:-600}
CPU=${3:-$(($(nproc) - 1))}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PULSE=${PULSE_BINARY:-}
for candidate in "$ROOT"/.build-bench/*/release/pulse "$ROOT"/.build/release/pulse; do
  [[ -z "$PULSE" && -x "$candidate" ]] && PULSE=$candidate
done
[[ -x "$PULSE" ]] || { echo "no pulse binary: swift build -c release --product pulse (or set PULSE_BINARY)" >&2; exit 1; }
NATS_SERVER=$(command -v nats-server || echo /usr/sbin/nats-server)
[[ -x "$NATS_SERVER" ]] || { echo "nats-server not installed" >&2; exit 1; }

# shellcheck source=perf/common.sh
source "$ROOT/perf/common.sh"
wait_ready() {  # bounded: $1 seconds
  local deadline=$((SECONDS + $1))
  while ((SECONDS < deadline)); do
    kill -0 "$PID" 2>/dev/null || break
    [[ "$(beats_total)" -gt 1 ]] 2>/dev/null && return 0
    sleep 0.2
  done
  echo "pulse did not start beating (or died) within $1 s; log:" >&2
  tail -5 "$TMP/pulse.log" >&2
  exit 1
}

NATS_PORT=$(free_port)
"$NATS_SERVER" -a 127.0.0.1 -p "$NATS_PORT" >"$TMP/nats.log" 2>&1 &
PIDS+=($!); disown
sleep 0.5
ADMIN=$(free_port)
FLAGS=(-bootstrap -cluster perf -bpm "$BPM" -min-bpm 1 -max-bpm $((BPM > 600 ? BPM : 600))
  -nats "nats://127.0.0.1:$NATS_PORT" -admin-port "$ADMIN" -data-dir "$TMP/data" -cpu "$CPU")

if perf stat -e instructions true 2>&1 | grep -q '<not supported>' || ! command -v perf >/dev/null; then
  command -v valgrind >/dev/null || { echo "neither perf counters nor valgrind available" >&2; exit 1; }
  echo "perf counters not supported here: valgrind --tool=callgrind (instructions only)"
  # Valgrind cannot read the DWARF Swift emits ("possibly corrupted debuginfo"):
  # run a copy without debug sections (the symbol table stays, so names resolve).
  if command -v objcopy >/dev/null; then
    objcopy --strip-debug "$PULSE" "$TMP/pulse" && PULSE="$TMP/pulse"
  fi
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$TMP/callgrind.out" \
    "$PULSE" "${FLAGS[@]}" >"$TMP/pulse.log" 2>&1 &
  PID=$!
  PIDS+=($PID); disown
  wait_ready 120
  B0=$(beats_total)
  callgrind_control -i on "$PID" >/dev/null 2>&1
  sleep "$SECONDS_ARG"
  callgrind_control -i off "$PID" >/dev/null 2>&1
  B1=$(beats_total)
  kill -TERM "$PID"
  for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
  IR=$(awk '/^(summary|totals):/ {print $2}' "$TMP"/callgrind.out* | sort -n | tail -1)
  BEATS=$((B1 - B0))
  echo "window ${SECONDS_ARG} s at ${BPM} bpm: ${BEATS} beats, ${IR} instructions (whole process, all threads)"
  awk -v ir="$IR" -v b="$BEATS" 'BEGIN { if (b > 0) printf "instructions per beat: %.0f\n", ir / b; else print "no beats in the window" }'
  echo "(under valgrind the pulse runs ~50x slower and without SCHED_FIFO; the count includes the NATS ping and housekeeping)"
else
  "$PULSE" "${FLAGS[@]}" -rt-priority 50 -mlock >"$TMP/pulse.log" 2>&1 &
  PID=$!
  PIDS+=($PID); disown
  wait_ready 20
  B0=$(beats_total)
  perf stat -x, -e instructions,cycles -p "$PID" -o "$TMP/perf.csv" -- sleep "$SECONDS_ARG"
  B1=$(beats_total)
  BEATS=$((B1 - B0))
  INS=$(awk -F, '$3 ~ /^instructions/ {print $1}' "$TMP/perf.csv")
  CYC=$(awk -F, '$3 ~ /^cycles/ {print $1}' "$TMP/perf.csv")
  echo "window ${SECONDS_ARG} s at ${BPM} bpm: ${BEATS} beats, ${INS} instructions, ${CYC} cycles (whole process)"
  awk -v i="$INS" -v c="$CYC" -v b="$BEATS" 'BEGIN { if (b > 0) printf "instructions per beat: %.0f\ncycles per beat: %.0f\n", i / b, c / b; else print "no beats in the window" }'
fi
