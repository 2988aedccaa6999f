#!/usr/bin/env bash
# Validates every deployment file under deploy/ with the tool that owns its
# format (make test-deploy, part of make test):
#   docker-compose.yml, docker-compose.swarm.yml,  docker-compose config (Debian docker-compose)
#   docker-compose.nats-kv.yml
#   prometheus/prometheus.yml, alerts.yml          promtool check config / check rules / test rules (each alert
#                                                  fires in a test), runbook_url = one absolute base + an anchor
#   systemd/pulse@.service                         systemd-analyze verify (any diagnostic fails)
#   grafana/dashboards/*.json                      JSON; every panel query compiles (promtool check rules);
#                                                  DeployTests evaluates each one against a live node
#   Dockerfile                                     structure (no Docker daemon here): multi-stage,
#                                                  Debian bases and apt-get only, COPY --from known stages
set -euo pipefail
cd "$(dirname "$0")/../deploy"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
fail() { echo "check-deploy: $*" >&2; exit 1; }

# Compose files: the variables they require, set to placeholders.
export BACKBEAT_PULSE_NKEY=UPLACEHOLDER BACKBEAT_CONSUMER_PASSWORD=x BACKBEAT_ADMIN_TOKEN=x GRAFANA_ADMIN_PASSWORD=x
for f in docker-compose.yml docker-compose.swarm.yml docker-compose.nats-kv.yml; do
  docker-compose -f "$f" config -q 2> "$scratch/compose.err" || { cat "$scratch/compose.err"; fail "$f"; }
  # Only the known note about swarm `configs` may be printed.
  if grep -v "use the 'configs' key\|^$" "$scratch/compose.err" | grep -q .; then cat "$scratch/compose.err"; fail "$f"; fi
  echo "ok  $f (docker-compose config)"
done

promtool check config prometheus/prometheus.yml > /dev/null
promtool check rules prometheus/alerts.yml > /dev/null
(cd prometheus && promtool test rules alerts_test.yml > /dev/null)
python3 - prometheus/alerts.yml prometheus/alerts_test.yml ../docs/operations.md <<'PY'
import re, sys
rules, tests, doc = (open(f).read() for f in sys.argv[1:4])
alerts = re.findall(r"- alert: (\w+)", rules)
base = re.search(r"^# runbook_base: (https?://\S+)$", rules, re.M)
assert base, "alerts.yml names no '# runbook_base: https://...' line"
urls = re.findall(r'runbook_url: "([^"]*)"', rules)
assert len(urls) == len(alerts), f"{len(alerts)} alerts, {len(urls)} runbook_url"
stray = [u for u in urls if not u.startswith(base.group(1) + "#")]
assert not stray, f"runbook_url not under the runbook_base {base.group(1)}: {stray}"
anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^## (.+)$", doc, re.M)}
missing = [u.split("#")[1] for u in urls if u.split("#")[1] not in anchors]
assert not missing, f"runbook anchors missing from docs/operations.md: {missing}"
# Every alert has a test in which it fires (a non-empty exp_alerts).
firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", tests))
untested = [a for a in alerts if a not in firing]
assert not untested, f"alerts without a promtool test in which they fire: {untested}"
PY
echo "ok  prometheus/ (promtool check config, check rules, test rules)"

# systemd: verify needs ExecStart to exist; the binary is not installed here.
sed "s|/usr/local/bin/pulse|/bin/true|" systemd/pulse@.service > "$scratch/pulse@n1.service"
out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$scratch/pulse@n1.service" 2>&1) || fail "systemd-analyze: $out"
# Version 252 exits 0 on unknown keys: any diagnostic about the unit fails.
if echo "$out" | grep -q "pulse@n1.service"; then echo "$out"; fail "systemd/pulse@.service"; fi
# A stopping leader runs until its next frame came back, at most a beat
# period plus 3 s (PulseNode.housekeeping): 18 s at 4 bpm, the default -min-bpm.
stop_s=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)$/\1/p' systemd/pulse@.service)
[ -n "$stop_s" ] && [ "$stop_s" -gt 18 ] || fail "systemd/pulse@.service: TimeoutStopSec=${stop_s:-unset} must exceed a leader's hand-over (18 s at 4 bpm)"
echo "ok  systemd/pulse@.service (systemd-analyze verify, TimeoutStopSec ${stop_s} s > a hand-over)"

# Dashboards: valid JSON, every target's expression as a recording rule.
python3 - "$scratch/panels.yml" grafana/dashboards/*.json <<'PY'
import json, sys
out, files = sys.argv[1], sys.argv[2:]
rules = []
for f in files:
    d = json.load(open(f))
    assert d.get("uid") and d.get("panels"), f
    for p in d["panels"]:
        assert p.get("targets"), f"{f}: panel {p.get('title')} has no query"
        for t in p["targets"]:
            rules.append(f"      - record: panel:{p['id']}:{t['refId']}\n        expr: {json.dumps(t['expr'])}\n")
open(out, "w").write("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
print(f"ok  grafana/dashboards ({len(rules)} queries compile:", end=" ")
PY
promtool check rules "$scratch/panels.yml" > /dev/null || fail "grafana/dashboards: a panel query does not compile"
echo "promtool check rules)"

python3 - Dockerfile <<'PY'
import re, sys
text = open(sys.argv[1]).read()
lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.startswith("#")]
stages = [l.split() for l in lines if l.upper().startswith("FROM ")]
assert len(stages) >= 2, "not multi-stage"
names = {s[3] for s in stages if len(s) >= 4 and s[2].upper() == "AS"}
seen = set()
for s in stages:
    # A base is a Debian image or a stage defined above.
    assert s[1] in seen or re.match(r"(debian:|swift:[\d.]+-bookworm)", s[1]), f"base image not Debian: {s[1]}"
    if len(s) >= 4 and s[2].upper() == "AS":
        seen.add(s[3])
assert stages[-1][3:4] == ["runtime"] and "COPY --from=build /out/pulse /usr/local/bin/pulse" in lines, \
    "the default (last) stage is not the runtime built from source"
for l in lines:
    m = re.search(r"--from=(\S+)", l)
    assert not m or m.group(1) in names, f"COPY --from unknown stage: {l}"
    assert not re.search(r"curl[^|]*\|\s*(ba)?sh|pip install|npm install|wget ", l), f"not a Debian package: {l}"
print("ok  Dockerfile (multi-stage, Debian bases, apt-get only)")
PY
