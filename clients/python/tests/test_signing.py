"""Signed publications (docs/vectors/signatures.json, docs/protocol.md
"Signatures"): the Python client's verifier gives every case's result; the
node's own signer made the signed payloads (Tests/PulseTests checks it
reproduces them byte for byte)."""
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import unittest
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from backbeat_client import BackbeatClient, PublicationVerifier  # noqa: E402
from backbeat_client.signing import key_id, public_key_from_pem  # noqa: E402
from test_live import free_port, http, schemas, start_nats, stop_all, wait_until  # noqa: E402

with open(os.path.join(HERE, "..", "..", "..", "docs", "vectors", "signatures.json")) as f:
    VECTORS = json.load(f)
KEYS = {k["name"]: k for k in VECTORS["keys"]}


class SignatureVectors(unittest.TestCase):
    def setUp(self):
        self.verifier = PublicationVerifier(KEYS[name]["public_pem"] for name in VECTORS["trusted"])

    def test_keys(self):
        for k in VECTORS["keys"]:
            raw = public_key_from_pem(k["public_pem"])
            self.assertEqual(raw.hex(), k["public_hex"])
            self.assertEqual(key_id(raw), k["key_id"])
        self.assertEqual(self.verifier.key_ids, sorted(KEYS[n]["key_id"] for n in VECTORS["trusted"]))

    def test_cases(self):
        self.assertGreaterEqual(len(VECTORS["cases"]), 10)
        for case in VECTORS["cases"]:
            with self.subTest(case["name"]):
                got = self.verifier.check(case["payload"].encode())
                self.assertEqual(got or "valid", case["result"])

    def test_schemas_describe_signed_publications(self):
        """Signed frames, timelines and announcements validate against docs/schema
        (kid and sig optional, together, with their patterns); a malformed sig does not."""
        validators = schemas()
        by_type = {"backbeat.beatframe.v1": "beatframe.v1.json", "backbeat.timeline.v1": "timeline.v1.json",
                   "backbeat.tempo_change.v1": "tempo-change.v1.json"}
        checked = set()
        for case in VECTORS["cases"]:
            if case["result"] != "valid":
                continue
            message = json.loads(case["payload"])
            validator = validators[by_type[message["type"]]]
            self.assertEqual(list(validator.iter_errors(message)), [], case["name"])
            checked.add(message["type"])
            for broken in ({**message, "sig": message["sig"].upper()}, {k: v for k, v in message.items() if k != "kid"}):
                self.assertNotEqual(list(validator.iter_errors(broken)), [], case["name"])
        self.assertEqual(checked, set(by_type))

    def test_rotation_dropped_key_is_unknown(self):
        only_next = PublicationVerifier([bytes.fromhex(KEYS["next"]["public_hex"])])
        signed_by_current = next(c for c in VECTORS["cases"] if c.get("signed_by") == "current")
        self.assertEqual(only_next.check(signed_by_current["payload"].encode()), "unknown_key")

    def test_bad_keys_refused(self):
        with self.assertRaises(ValueError):
            PublicationVerifier([])
        with self.assertRaises(ValueError):
            PublicationVerifier([KEYS["current"]["private_pem"]])
        with self.assertRaises(ValueError):
            PublicationVerifier([b"\x00" * 31])

    def test_client_refuses_and_counts(self):
        """The client drops an unsigned or wrongly signed frame before the tracker and counts it."""
        client = BackbeatClient(None, "chorus-aus-01", 1.0, verifier=self.verifier)
        by_result = {c["result"]: c["payload"].encode() for c in VECTORS["cases"]}

        async def run():
            for result in ("unsigned", "unknown_key", "bad_signature"):
                await client._on_beat(SimpleNamespace(data=by_result[result], reply=""))
            await client._on_timeline(SimpleNamespace(data=by_result["unsigned"], reply=""))
        asyncio.run(run())
        self.assertEqual(client.signature_refusals, 4)
        self.assertEqual(client.tracker.accepted, 0)
        reasons = []
        while not client._queue.empty():
            reasons.append(client._queue.get_nowait().reason)
        self.assertEqual(reasons, ["unsigned", "unknown_key", "bad_signature", "timeline_unsigned"])


class SignedNode(unittest.TestCase):
    """A real `pulse -sign-key` (the vectors' `current` key) and nats-server: the
    client holding the public keys takes its signed frames and timeline, and
    refuses and counts a forged unsigned copy of a frame."""

    def test_live_signed_node(self):
        directory = tempfile.mkdtemp(prefix="backbeat-pysigned-")
        key_path = os.path.join(directory, "sign.key")
        with open(key_path, "w") as f:
            f.write(KEYS["current"]["private_pem"])
        os.chmod(key_path, 0o600)
        nats_process, nats_port = start_nats()
        processes = [nats_process]
        admin = free_port()
        url = f"nats://127.0.0.1:{nats_port}"
        log = open(os.path.join(directory, "node.log"), "w")
        processes.append(subprocess.Popen(
            [os.environ["PULSE_BIN"], "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", "pysigned",
             "-nats", url, "-data-dir", os.path.join(directory, "node"), "-admin-port", str(admin),
             "-sign-key", key_path], stdout=log, stderr=log))
        try:
            self.assertTrue(wait_until(10, lambda: http("GET", admin, "/timeline")[0] == 200), "no timeline")
            asyncio.run(asyncio.wait_for(self.scenario(url), 30))
        finally:
            stop_all(processes, log, directory)

    async def scenario(self, url):
        import nats
        keys = [KEYS[name]["public_pem"] for name in VECTORS["trusted"]]
        client = await BackbeatClient.connect(url, cluster="pysigned", public_keys=keys)
        attacker = await nats.connect(url)
        real = []

        async def keep(msg):
            real.append(msg.data)
        sub = await attacker.subscribe("backbeat.pysigned.beat", cb=keep)
        beats, refused, sent = 0, [], False
        try:
            deadline = asyncio.get_running_loop().time() + 5
            async for event in client.events():
                if event.kind == "beat":
                    beats += 1
                elif event.kind == "refused":
                    refused.append(event.reason)
                if real and not sent and beats >= 5:
                    # The real frame without its signature members, sent again.
                    await attacker.publish("backbeat.pysigned.beat", real[-1][:-163] + b"}")
                    sent = True
                if (beats >= 15 and refused) or asyncio.get_running_loop().time() > deadline:
                    break
        finally:
            await sub.unsubscribe()
            await attacker.close()
            await client.close()
        self.assertTrue(real and client.verifier is not None and client.verifier.check(real[0]) is None,
                        "the node's frames verify")
        self.assertGreaterEqual(beats, 15, "signed frames accepted")
        self.assertEqual(refused, ["unsigned"])
        self.assertEqual(client.signature_refusals, 1)


if __name__ == "__main__":
    unittest.main()
