# perf/common.sh — sourced by the perf/ scripts: a temporary directory and
# every child killed on exit ($PIDS), a free loopback port, the pulse's beat
# count from its admin port ($ADMIN).
TMP=$(mktemp -d /tmp/pulse-perf.XXXXXX)
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
