#!/bin/sh
# scripts/dist.sh BINARY OUTDIR — `make dist`: a versioned tarball of the
# release pulse, backbeat-pulse-VERSION-linux-ARCH.tar.gz, laid out as
# scripts/install.sh installs it under a prefix (bin/, lib/systemd/,
# share/doc/backbeat/), with DEPENDENCIES: the shared libraries the binary
# loads and the Debian package of each (dpkg -S), to apt-get install on the
# target. The binary must carry the Swift runtime itself
# (--static-swift-stdlib): a library from the toolchain is refused.
set -eu
binary="${1:?usage: scripts/dist.sh BINARY OUTDIR}"
out="${2:-dist}"
root="$(cd "$(dirname "$0")/.." && pwd)"
line=$("$binary" --version)
version=$(echo "$line" | sed -n 's/^pulse \([0-9][0-9.]*\) .*/\1/p')
case "$line" in *", release)") ;; *) echo "dist: $binary is not a release build ($line)" >&2; exit 1 ;; esac
[ -n "$version" ] || { echo "dist: cannot read the version from '$line'" >&2; exit 1; }
name="backbeat-pulse-$version-linux-$(uname -m)"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
"$root/scripts/install.sh" "$binary" /usr/local "$stage/$name" >/dev/null
mv "$stage/$name/usr/local"/* "$stage/$name/" && rm -rf "$stage/$name/usr"
deps="$stage/$name/DEPENDENCIES"
{
  echo "# $line"
  echo "# Shared libraries pulse loads (ldd) and the Debian package that ships each:"
  echo "# apt-get install \$(grep -v '^#' DEPENDENCIES | cut -f1 | sort -u)"
} > "$deps"
toolchain=""
for lib in $(ldd "$binary" | awk '/=>/ { print $3 } !/=>/ && $1 ~ /^\// { print $1 }'); do
  real=$(readlink -f "$lib")
  pkg=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$real" 2>/dev/null || true)
  pkg=$(echo "$pkg" | head -1 | cut -d: -f1)
  if [ -z "$pkg" ]; then toolchain="$toolchain $lib"; continue; fi
  printf '%s\t%s\t%s\n' "$pkg" "$(dpkg-query -W -f='${Version}' "$pkg")" "$(basename "$lib")" >> "$deps"
done
if [ -n "$toolchain" ]; then
  echo "dist: $binary loads libraries no Debian package ships (build with --static-swift-stdlib):$toolchain" >&2
  exit 1
fi
mkdir -p "$out"
tar -C "$stage" --owner=0 --group=0 --sort=name -czf "$out/$name.tar.gz" "$name"
echo "$out/$name.tar.gz"
