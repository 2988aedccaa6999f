#!/bin/sh
# scripts/install.sh BINARY PREFIX DESTDIR — what `make install` installs:
#   $PREFIX/bin/pulse                            the binary
#   $PREFIX/lib/systemd/system/pulse@.service    the unit, ExecStart pointing at $PREFIX/bin/pulse
#   $PREFIX/share/doc/backbeat/                  README, CHANGELOG, LICENSE, operations, security,
#                                                protocol, and pulse --help (pulse.txt, the manual)
# under DESTDIR (staging, as packagers use it; empty: the live system).
set -eu
binary="${1:?usage: scripts/install.sh BINARY PREFIX DESTDIR}"
prefix="${2:-/usr/local}"
destdir="${3:-}"
root="$(cd "$(dirname "$0")/.." && pwd)"
[ -x "$binary" ] || { echo "install: no executable $binary (make release)" >&2; exit 1; }
case "$prefix" in /*) ;; *) echo "install: PREFIX must be absolute (got $prefix)" >&2; exit 2 ;; esac
bin="$destdir$prefix/bin"
unit="$destdir$prefix/lib/systemd/system"
doc="$destdir$prefix/share/doc/backbeat"
install -d -m 0755 "$bin" "$unit" "$doc"
install -m 0755 "$binary" "$bin/pulse"
sed "s|/usr/local/bin/pulse|$prefix/bin/pulse|g; s|file:///usr/share/doc/backbeat/|file://$prefix/share/doc/backbeat/|g" \
  "$root/deploy/systemd/pulse@.service" > "$unit/pulse@.service"
chmod 0644 "$unit/pulse@.service"
for f in README.md CHANGELOG.md LICENSE docs/operations.md docs/security.md docs/protocol.md; do
  install -m 0644 "$root/$f" "$doc/$(basename "$f")"
done
{
  "$binary" --version
  echo
  "$binary" --help
  for sub in watch backup restore members; do echo; "$binary" "$sub" --help; done
} > "$doc/pulse.txt"
chmod 0644 "$doc/pulse.txt"
echo "installed pulse ($("$binary" --version)) under ${destdir:-/}${destdir:+ }$prefix"
