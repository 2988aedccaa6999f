#!/bin/sh
# scripts/set-runbook-base.sh URL — points every alert's runbook_url at URL
# (where your copy of docs/operations.md is served, e.g.
# https://git.example.com/backbeat/pulse/blob/v0.1.0/docs/operations.md):
# rewrites the `# runbook_base:` line and every runbook_url in
# deploy/prometheus/alerts.yml and alerts_test.yml, then re-runs promtool's
# tests. Each URL is then URL#section.
set -eu
base="${1:?usage: scripts/set-runbook-base.sh https://host/path/operations.md}"
case "$base" in
http://* | https://*) ;;
*) echo "set-runbook-base: $base is not an absolute http(s) URL" >&2; exit 2 ;;
esac
case "$base" in
*'#'* | *'"'* | *' '* | *'|'* | *'&'* | *'\'*) printf '%s\n' "set-runbook-base: $base must not contain '#', '\"', '|', '&', '\\' or spaces (percent-encode them)" >&2; exit 2 ;;
esac
dir="$(dirname "$0")/../deploy/prometheus"
old=$(sed -n 's/^# runbook_base: //p' "$dir/alerts.yml")
[ -n "$old" ] || { echo "set-runbook-base: no '# runbook_base:' line in $dir/alerts.yml" >&2; exit 1; }
for f in "$dir/alerts.yml" "$dir/alerts_test.yml"; do
  sed -i "s|^# runbook_base: .*|# runbook_base: $base|; s|runbook_url: \"$old#|runbook_url: \"$base#|g" "$f"
done
(cd "$dir" && promtool test rules alerts_test.yml >/dev/null)
echo "runbook_url base: $base"
