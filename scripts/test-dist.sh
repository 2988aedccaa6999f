#!/bin/sh
# scripts/test-dist.sh TARBALL — make test-dist: what `make dist` made, checked
# as a user unpacking it would meet it:
#   - the name is backbeat-pulse-VERSION-linux-ARCH.tar.gz for this machine;
#   - every entry is under that directory (no absolute path, no ..), owned by root;
#   - it holds the binary, the systemd unit (ExecStart at /usr/local/bin/pulse,
#     the layout's prefix), the docs, pulse --help as text and DEPENDENCIES;
#   - the unpacked bin/pulse runs: `--version` says VERSION and a release build;
#   - DEPENDENCIES names every shared library the unpacked binary loads (ldd),
#     each with the Debian package and version installed here, and nothing
#     from the Swift toolchain (the runtime is linked in);
#   - the CHANGELOG it carries has a section for VERSION.
# make test-image then runs the same unpacked tree in a bare Debian image.
set -eu
tarball="${1:?usage: scripts/test-dist.sh TARBALL}"
fail() { echo "test-dist: $*" >&2; exit 1; }
ok() { echo "ok  $*"; }
[ -f "$tarball" ] || fail "no $tarball (make dist)"

file=$(basename "$tarball")
name=${file%.tar.gz}
version=$(echo "$name" | sed -n "s/^backbeat-pulse-\([0-9][0-9]*\.[0-9][0-9]*\.[0-9][0-9]*\)-linux-$(uname -m)\$/\1/p")
[ -n "$version" ] || fail "$file is not named backbeat-pulse-X.Y.Z-linux-$(uname -m).tar.gz"
ok "name $file (version $version)"

listing=$(tar -tzf "$tarball")
stray=$(echo "$listing" | grep -v "^$name/" || true)
[ -z "$stray" ] || fail "entries outside $name/: $stray"
case "$listing" in */../* | *"/.."*) fail "an entry climbs out with ..";; esac
owners=$(tar -tvzf "$tarball" | awk '{ print $2 }' | sort -u)
[ "$owners" = "root/root" ] || fail "entries owned by $owners, not root/root"
for f in bin/pulse lib/systemd/system/pulse@.service DEPENDENCIES \
  share/doc/backbeat/README.md share/doc/backbeat/CHANGELOG.md share/doc/backbeat/LICENSE \
  share/doc/backbeat/operations.md share/doc/backbeat/security.md share/doc/backbeat/protocol.md \
  share/doc/backbeat/pulse.txt; do
  echo "$listing" | grep -qx "$name/$f" || fail "missing $name/$f"
done
ok "layout: bin/pulse, the unit, the docs, pulse.txt, DEPENDENCIES; all under $name/, root-owned"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
tar -C "$scratch" -xzf "$tarball"
tree="$scratch/$name"
[ -x "$tree/bin/pulse" ] || fail "bin/pulse is not executable"
line=$("$tree/bin/pulse" --version) || fail "bin/pulse --version failed"
case "$line" in "pulse $version ("*", release)") ;; *) fail "bin/pulse --version: '$line' (want pulse $version, release)";; esac
ok "bin/pulse --version: $line"

grep -q "^ExecStart=/usr/local/bin/pulse " "$tree/lib/systemd/system/pulse@.service" \
  || fail "the unit does not start /usr/local/bin/pulse"
grep -q -- "-bootstrap" "$tree/share/doc/backbeat/pulse.txt" || fail "pulse.txt does not hold --help"
grep -q "^## $version" "$tree/share/doc/backbeat/CHANGELOG.md" || fail "CHANGELOG.md has no '## $version' section"
ok "unit ExecStart /usr/local/bin/pulse, pulse.txt is --help, CHANGELOG has $version"

deps="$tree/DEPENDENCIES"
head -1 "$deps" | grep -qx "# $line" || fail "DEPENDENCIES is not of this binary: $(head -1 "$deps")"
bad=$(grep -v '^#' "$deps" | awk -F '\t' 'NF != 3 { print }')
[ -z "$bad" ] || fail "DEPENDENCIES lines without package, version and library: $bad"
ldd "$tree/bin/pulse" | grep -q "not found" && fail "the unpacked binary misses libraries: $(ldd "$tree/bin/pulse" | grep 'not found')"
count=0
for lib in $(ldd "$tree/bin/pulse" | awk '/=>/ { print $3 } !/=>/ && $1 ~ /^\// { print $1 }'); do
  base=$(basename "$lib")
  case "$(readlink -f "$lib")" in */swift/*) fail "loads $lib from the Swift toolchain";; esac
  entry=$(grep -v '^#' "$deps" | awk -F '\t' -v b="$base" '$3 == b { print $1 "\t" $2 }')
  [ -n "$entry" ] || fail "DEPENDENCIES does not name $base, which bin/pulse loads"
  pkg=$(echo "$entry" | cut -f1)
  [ "$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null)" = "$(echo "$entry" | cut -f2)" ] \
    || fail "DEPENDENCIES: $pkg $(echo "$entry" | cut -f2) is not the installed version"
  count=$((count + 1))
done
[ "$count" -gt 0 ] || fail "ldd listed no library"
ok "DEPENDENCIES names all $count libraries bin/pulse loads, with the installed package versions"
