#!/bin/sh
# scripts/certs.sh — a throwaway CA and node certificates for Raft mutual TLS
# (development and tests only; keep real CAs' keys elsewhere).
#
#   scripts/certs.sh DIR [NAME...]            # default names: n1 n2 n3
#   scripts/certs.sh -ca DIR                  # only the CA (DIR/ca.pem, DIR/ca.key)
#   scripts/certs.sh -with-ca CADIR DIR NAME...   # certificates signed by CADIR's CA
#
# Each NAME gets DIR/NAME.pem and DIR/NAME.key: ECDSA P-256, valid 30 days,
# subjectAltName DNS:NAME (the node id of `-peers NAME@host:port`). Set
# CERT_IP=a.b.c.d to add IP:a.b.c.d too (for `-peers host:port` entries when
# each node has its own address). Needs the openssl CLI.
set -eu

only_ca=0
ca_dir=""
case "${1:-}" in
-ca) only_ca=1; shift ;;
-with-ca) ca_dir="$2"; shift 2 ;;
esac
dir="${1:?usage: scripts/certs.sh DIR [NAME...]}"
shift
[ "$#" -gt 0 ] || set -- n1 n2 n3
mkdir -p "$dir"
umask 077

if [ -z "$ca_dir" ]; then
    ca_dir="$dir"
    if [ ! -f "$dir/ca.pem" ]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj "/CN=backbeat throwaway CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    fi
fi
[ "$only_ca" -eq 1 ] && exit 0

for name in "$@"; do
    san="DNS:$name"
    [ -n "${CERT_IP:-}" ] && san="$san,IP:$CERT_IP"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
        -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
    printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' \
        "$san" >"$dir/$name.ext"
    openssl x509 -req -in "$dir/$name.csr" -CA "$ca_dir/ca.pem" -CAkey "$ca_dir/ca.key" -CAcreateserial \
        -days 30 -extfile "$dir/$name.ext" -out "$dir/$name.pem" 2>/dev/null
    rm -f "$dir/$name.csr" "$dir/$name.ext"
done
echo "certificates in $dir: ca.pem $(printf '%s.pem ' "$@")"
