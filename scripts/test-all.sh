#!/usr/bin/env bash
# The seed's `make test-all`: starts nats-server and one node on loopback and
# exercises every admin endpoint with sample requests, checking status codes.
# Exits non-zero on the first unexpected answer.
set -euo pipefail
bin=${PULSE_BIN:?set PULSE_BIN to the pulse binary}
nats_port=${NATS_PORT:-14222}
admin_port=${ADMIN_PORT:-18080}
dir=$(mktemp -d)
nats-server -a 127.0.0.1 -p "$nats_port" >"$dir/nats.log" 2>&1 & nats_pid=$!
trap 'kill $node_pid $nats_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
sleep 0.3
"$bin" -bootstrap -bpm 120 -max-bpm 600 -nats "nats://127.0.0.1:$nats_port" -admin-port "$admin_port" \
  -data-dir "$dir/node" >"$dir/node.log" 2>&1 & node_pid=$!
base="http://127.0.0.1:$admin_port"
for _ in $(seq 50); do curl -fs "$base/live" >/dev/null 2>&1 && break; sleep 0.1; done
fail=0
check() { # expected-status method path [body]
  local want=$1 method=$2 path=$3 body=${4:-}
  local got
  if [ -n "$body" ]; then
    got=$(curl -s -o "$dir/out" -w '%{http_code}' -X "$method" -H 'Content-Type: application/json' -d "$body" "$base$path")
  else
    got=$(curl -s -o "$dir/out" -w '%{http_code}' -X "$method" "$base$path")
  fi
  local mark=ok; [ "$got" = "$want" ] || { mark=FAIL; fail=1; }
  printf '%-4s %3s %-6s %-8s %s\n' "$mark" "$got" "$method" "$path" "$(head -c 160 "$dir/out" | tr '\n' ' ')"
}
sleep 1.2 # let NATS connect and a beat or two go out
check 200 GET /live
check 200 GET /ready
check 200 GET /health
check 200 GET /leader
check 200 GET /drift
check 200 GET /tempo
check 202 POST /tempo '{"tempo_bpm": 126, "justification": "test-all"}'
check 409 POST /tempo '{"tempo_bpm": 125}'
check 422 POST /tempo '{"tempo_bpm": 999}'
check 400 POST /tempo '{"tempo_bpm": "fast"}'
check 400 POST /tempo 'not json'
check 404 GET /nope
check 405 DELETE /tempo
check 200 GET /metrics
if command -v promtool >/dev/null; then
  curl -s "$base/metrics" | promtool check metrics && echo "ok   promtool check metrics" || { echo "FAIL promtool"; fail=1; }
fi
exit $fail
