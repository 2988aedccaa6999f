#!/bin/sh
# scripts/make-base-images.sh [debian] — the two base images deploy/Dockerfile
# names, made locally from Debian packages when no registry can provide them
# (make image runs it; an existing image is kept; `debian`: only the first,
# all that the Dockerfile's dist target needs, for make test-image):
#   debian:bookworm-slim   debootstrap --variant=minbase bookworm (Debian's mirror)
#   swift:6.3-bookworm     that, plus the Debian packages the Swift toolchain
#                          needs, plus the toolchain installed on this machine
#                          (SWIFT_TOOLCHAIN, default: two levels above `swift`,
#                          e.g. /opt/swift), at the same path, on PATH
# Rootful podman/buildah (Debian packages podman, buildah, debootstrap).
# Build steps run with chroot isolation: this machine's hybrid cgroups stop
# crun, and an OCI runtime refuses the default rlimits here.
set -eu
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
log() { echo "make-base-images: $*" >&2; }

# Where this machine's git finds github.com packages (url.DIR.insteadOf, a
# local mirror when GitHub is out of reach): the build stage gets the same
# mirror at the same path and the same setting, so SwiftPM resolves
# Package.swift's dependencies inside it as it does here. Nothing without one.
add_package_mirror() {
  dir=$(git config --system --get-regexp '^url\..*\.insteadof$' 2>/dev/null \
    | awk '$2 == "https://github.com/" { print $1 }' | sed 's/^url\.//; s/\.insteadof$//' | head -1)
  [ -n "$dir" ] && [ -d "$dir" ] || return 0
  log "  + the package mirror $dir ($(du -sh "$dir" | cut -f1)) for https://github.com/"
  buildah copy "$1" "$dir" "$dir" >/dev/null
  buildah run --isolation chroot "$1" -- git config --system "url.$dir.insteadOf" https://github.com/
}

if podman image exists debian:bookworm-slim; then
  log "debian:bookworm-slim present"
else
  log "debian:bookworm-slim: debootstrap --variant=minbase bookworm from $mirror (a few minutes)"
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  # The official image's sources: point releases and security updates too
  # (debootstrap lists only bookworm, so the image would miss security fixes).
  rm -f "$root/etc/apt/sources.list"
  cat > "$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - localhost/debian:bookworm-slim >/dev/null
  podman tag localhost/debian:bookworm-slim docker.io/library/debian:bookworm-slim
  rm -rf "$root"
  trap - EXIT
fi

if [ "${1:-all}" = debian ]; then
  exit 0
elif podman image exists swift:6.3-bookworm; then
  log "swift:6.3-bookworm present"
else
  toolchain="${SWIFT_TOOLCHAIN:-$(dirname "$(dirname "$(dirname "$(command -v swift)")")")}"
  [ -x "$toolchain/usr/bin/swift" ] || { log "no Swift toolchain at $toolchain (set SWIFT_TOOLCHAIN)"; exit 1; }
  log "swift:6.3-bookworm: debian:bookworm-slim + build packages + $toolchain ($(du -sh "$toolchain" | cut -f1))"
  # shellcheck disable=SC2086
  ctr=$(buildah from localhost/debian:bookworm-slim)
  trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
  buildah run --isolation chroot "$ctr" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends binutils libc6-dev libgcc-12-dev libstdc++-12-dev libcurl4 libxml2 libedit2 \
      libsqlite3-0 libncurses6 libz3-4 zlib1g-dev pkg-config tzdata git ca-certificates python3-minimal >/dev/null \
      && rm -rf /var/lib/apt/lists/*'
  buildah copy "$ctr" "$toolchain" "$toolchain" >/dev/null
  add_package_mirror "$ctr"
  buildah config --env "PATH=$toolchain/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" "$ctr"
  buildah commit --quiet "$ctr" localhost/swift:6.3-bookworm >/dev/null
  podman tag localhost/swift:6.3-bookworm docker.io/library/swift:6.3-bookworm
  buildah rm "$ctr" >/dev/null
  trap - EXIT
fi
