#!/usr/bin/env python3
"""Writes docs/vectors/signatures.json: signed publications (issue 20, -sign-key).

Run by hand after an intended change of the layout (PyNaCl: `pip install pynacl`
or Debian's python3-nacl). The node's own signer must reproduce every signed
payload byte for byte (Tests/PulseTests/PublicationSignerTests.swift), and the
Swift, Python and Go clients must give every case's result.
"""
import base64
import hashlib
import json
import os
import sys

import nacl.signing

PRIV_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
PUB_PREFIX = bytes.fromhex("302a300506032b6570032100")


def pem(label: str, der: bytes) -> str:
    b64 = base64.b64encode(der).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def key(name: str) -> dict:
    seed = hashlib.sha256(f"backbeat signature vector key {name}".encode()).digest()
    sk = nacl.signing.SigningKey(seed)
    pub = bytes(sk.verify_key)
    return {
        "name": name,
        "seed_hex": seed.hex(),
        "public_hex": pub.hex(),
        "key_id": hashlib.sha256(pub).digest()[:8].hex(),
        "private_pem": pem("PRIVATE KEY", PRIV_PREFIX + seed),
        "public_pem": pem("PUBLIC KEY", PUB_PREFIX + pub),
        "_sk": sk,
    }


def sign(k: dict, unsigned: str, kid: str | None = None) -> str:
    assert unsigned.endswith("}")
    message = unsigned[:-1] + ',"kid":"' + (kid or k["key_id"]) + '"}'
    sig = k["_sk"].sign(message.encode()).signature.hex()
    return message[:-2] + '","sig":"' + sig + '"}'


FRAME = (
    '{"type":"backbeat.beatframe.v1","cluster_id":"chorus-aus-01","beat_index":42,"downbeat":false,'
    '"phase":"work","hlc":"18f0a3c2b10:0001:ab12","deadline_at":"2025-09-04T12:00:21.500Z",'
    '"tempo_bpm":120,"window_id":"3f2a9c1d5e7b8a6f4c3d2e1f0a9b8c7d","term":3}'
)
DEGRADED = FRAME[:-1] + ',"degraded":true}'
TIMELINE = (
    '{"bar":8,"cluster_id":"chorus-aus-01","degraded":false,"epoch":{"bpm":120,"start_at":"2025-09-04T15:33:20.000Z",'
    '"start_beat":0,"start_ns":1757000000000000000},"leader":"n1","node_id":"n2","now_ns":1757000012345678901,'
    '"pending":null,"phases":["plan","work","review"],"term":3,"type":"backbeat.timeline.v1"}'
)
TEMPO = (
    '{"type":"backbeat.tempo_change.v1","cluster_id":"chorus-aus-01","beat_index":64,"tempo_bpm":126,'
    '"previous_bpm":120,"applied_at":"2025-09-04T15:33:52.000Z","justification":"bridge \\u00e9 \\"quoted\\""}'
)


def main() -> None:
    current, nxt, stranger = key("current"), key("next"), key("stranger")
    cases = []

    def case(name: str, payload: str, result: str, unsigned: str | None = None, signer: dict | None = None):
        c = {"name": name, "payload": payload, "result": result}
        if unsigned is not None and signer is not None:
            c["unsigned"] = unsigned
            c["signed_by"] = signer["name"]
        cases.append(c)

    signed = sign(current, FRAME)
    case("frame signed by the current key", signed, "valid", FRAME, current)
    case("degraded frame signed by the current key", sign(current, DEGRADED), "valid", DEGRADED, current)
    case("frame signed by the next key (a rotation's overlap)", sign(nxt, FRAME), "valid", FRAME, nxt)
    case("timeline reply signed", sign(current, TIMELINE), "valid", TIMELINE, current)
    case("tempo announcement signed", sign(nxt, TEMPO), "valid", TEMPO, nxt)
    case("unsigned frame", FRAME, "unsigned")
    case("frame signed by a key the consumer does not hold", sign(stranger, FRAME), "unknown_key")
    case(
        "a stranger's signature under the current key's id",
        sign(stranger, FRAME, kid=current["key_id"]),
        "bad_signature",
    )
    case("signed frame with its term changed", signed.replace('"term":3', '"term":9'), "bad_signature")
    last = "0" if signed[-3] != "0" else "1"
    case("signed frame with the signature's last digit changed", signed[:-3] + last + '"}', "bad_signature")
    case("signature in uppercase hex", signed[:-130] + signed[-130:-2].upper() + '"}', "unsigned")
    case("signature member not last", signed[:-1] + ',"x":1}', "unsigned")
    case("signature one digit short", signed[:-3] + '"}', "unsigned")
    case("trailing whitespace after the object", signed + "\n", "unsigned")

    doc = {
        "description": "Signed publications (docs/protocol.md, Signatures): for each case, "
        "what a consumer holding the public keys of `trusted` answers for `payload` "
        "(valid, unsigned, unknown_key, bad_signature); where `unsigned` and `signed_by` "
        "are given, signing `unsigned` with that key gives `payload` byte for byte.",
        "keys": [{k: v for k, v in key.items() if not k.startswith("_")} for key in (current, nxt, stranger)],
        "trusted": ["current", "next"],
        "cases": cases,
    }
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "vectors", "signatures.json")
    with open(out if len(sys.argv) < 2 else sys.argv[1], "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=True)
        f.write("\n")


if __name__ == "__main__":
    main()
