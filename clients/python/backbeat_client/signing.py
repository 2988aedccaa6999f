"""Signed publications (docs/protocol.md, "Signatures"): a cluster started with
`-sign-key` signs every frame, timeline publication and reply, and tempo
announcement with Ed25519; a consumer given the cluster's public keys (old and
new during a rotation) accepts only signed ones.

A signed publication P ends with `,"kid":"<16 hex>","sig":"<128 hex>"}`; the
signed message S is P without its `","sig":"…"` member (P[:-139] + b'"}'),
`kid` the first 8 bytes of SHA-256 of the signer's raw public key. Needs PyNaCl
(`pip install backbeat-client[signing]`).
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Dict, Iterable, List, Optional

__all__ = ["PublicationVerifier", "public_key_from_pem", "key_id", "REFUSALS"]

SIG_TRAILER = 139  # `","sig":"` + 128 hex + `"}`
_TRAILER = re.compile(rb',"kid":"([0-9a-f]{16})","sig":"([0-9a-f]{128})"\}\Z')
_PUB_PREFIX = bytes.fromhex("302a300506032b6570032100")
REFUSALS = ("unsigned", "unknown_key", "bad_signature")


def key_id(public_key: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 public key."""
    return hashlib.sha256(public_key).digest()[:8].hex()


def public_key_from_pem(pem: str) -> bytes:
    """The raw 32 bytes of a PEM Ed25519 public key (`openssl pkey -pubout`)."""
    lines = [line.strip() for line in pem.strip().splitlines() if line.strip()]
    if not lines or lines[0] != "-----BEGIN PUBLIC KEY-----" or "-----END PUBLIC KEY-----" not in lines:
        raise ValueError("not a PEM public key (-----BEGIN PUBLIC KEY----- ... -----END PUBLIC KEY-----)")
    der = base64.b64decode("".join(lines[1:lines.index("-----END PUBLIC KEY-----")]), validate=True)
    if len(der) != len(_PUB_PREFIX) + 32 or not der.startswith(_PUB_PREFIX):
        raise ValueError("not an Ed25519 public key (RFC 8410)")
    return der[len(_PUB_PREFIX):]


class PublicationVerifier:
    """Checks signed publications against the cluster's public keys (PEM strings or raw 32 bytes)."""

    def __init__(self, keys: Iterable[object]):
        from nacl.signing import VerifyKey
        self._keys: Dict[str, VerifyKey] = {}
        for key in keys:
            raw = public_key_from_pem(key) if isinstance(key, str) else key
            if not isinstance(raw, bytes) or len(raw) != 32:
                raise ValueError("an Ed25519 public key is a PEM string or 32 raw bytes")
            self._keys[key_id(raw)] = VerifyKey(raw)
        if not self._keys:
            raise ValueError("no public key given")

    @property
    def key_ids(self) -> List[str]:
        return sorted(self._keys)

    def check(self, data: bytes) -> Optional[str]:
        """None when `data` is signed by one of the keys, else why not:
        `unsigned`, `unknown_key` or `bad_signature`."""
        from nacl.exceptions import BadSignatureError
        match = _TRAILER.search(data)
        if match is None:
            return "unsigned"
        key = self._keys.get(match.group(1).decode())
        if key is None:
            return "unknown_key"
        message = data[:-SIG_TRAILER] + b'"}'
        try:
            key.verify(message, bytes.fromhex(match.group(2).decode()))
        except BadSignatureError:
            return "bad_signature"
        return None
