"""The Python client under the shipped NATS permissions (deploy/nats/backbeat.conf;
docs/protocol.md "Subjects"): a real nats-server with that file, a real `pulse`
connected with its nkey seed, and the client as the `consumer` user. It joins
(its timeline request goes on `.request.timeline`, the one timeline subject a
consumer may publish on), follows the beat, changes the tempo with the admin
token on `.request.control` and sees the change through the leader's
publications; the same consumer's publication on the timeline subject is a
permissions violation.  Bounded (30 s).

    PULSE_BIN=.build/debug/pulse python3 -m pytest clients/python/tests/test_permissions.py
"""
import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import nats  # noqa: E402
from backbeat_client import BackbeatClient  # noqa: E402
from test_live import free_port, http, start_nats, stop_all, wait_until  # noqa: E402

CLUSTER = "chorus-aus-01"  # the cluster id deploy/nats/backbeat.conf spells out
CONF = os.path.join(HERE, "..", "..", "..", "deploy", "nats", "backbeat.conf")


def crc16(data):
    """CRC-16/XMODEM, the nkey checksum."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def nkey_user():
    """(seed "SU...", public key "U...") of a fresh nkey user (the nkeys encoding, with PyNaCl)."""
    from nacl.signing import SigningKey
    raw = os.urandom(32)
    public = bytes(SigningKey(raw).verify_key)

    def encode(prefix, body):
        data = bytes(prefix) + body
        return base64.b32encode(data + crc16(data).to_bytes(2, "little")).decode().rstrip("=")
    seed_prefix, user_prefix = 18 << 3, 20 << 3
    return encode([seed_prefix | user_prefix >> 5, (user_prefix & 31) << 3], raw), encode([user_prefix], public)


class ShippedPermissions(unittest.TestCase):
    def test_client_as_consumer(self):
        directory = tempfile.mkdtemp(prefix="backbeat-pyperm-")
        seed, public = nkey_user()
        seed_path = os.path.join(directory, "pulse.nk")
        with open(seed_path, "w") as f:
            f.write(seed + "\n")
        os.chmod(seed_path, 0o600)
        password, token = os.urandom(8).hex(), os.urandom(8).hex()
        nats_log = os.path.join(directory, "nats.log")
        env = dict(os.environ, BACKBEAT_PULSE_NKEY=public, BACKBEAT_CONSUMER_PASSWORD=password)
        nats_process, nats_port = start_nats(["-c", CONF], env=env, log_path=nats_log)
        processes = [nats_process]
        admin = free_port()
        log = open(os.path.join(directory, "node.log"), "w")
        processes.append(subprocess.Popen(
            [os.environ["PULSE_BIN"], "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", CLUSTER,
             "-nats", f"nats://127.0.0.1:{nats_port}", "-nats-nkey", seed_path, "-admin-token", token,
             "-data-dir", os.path.join(directory, "node"), "-admin-port", str(admin)], stdout=log, stderr=log))
        try:
            self.assertTrue(wait_until(10, lambda: http("GET", admin, "/timeline")[0] == 200), "no timeline")
            asyncio.run(asyncio.wait_for(self.scenario(f"nats://consumer:{password}@127.0.0.1:{nats_port}", token), 30))
            with open(nats_log) as f:
                violations = [line for line in f if "Violation" in line]
            self.assertTrue(violations and all('User "consumer"' in v for v in violations), violations)
            self.assertTrue(any(f'Subject "backbeat.{CLUSTER}.timeline"' in v for v in violations), violations)
        finally:
            stop_all(processes, log, directory)

    async def scenario(self, url, token):
        client = await BackbeatClient.connect(url, cluster=CLUSTER, connect_timeout=10)
        errors = []

        async def on_error(e):
            errors.append(str(e))
        forger = await nats.connect(url, error_cb=on_error)
        beats, changed, missed = 0, None, []
        try:
            scheduled = await client.request_tempo(560, "under permissions", token=token)
            self.assertEqual((scheduled.tempo_bpm, scheduled.previous_bpm), (560, 600))
            await forger.publish(f"backbeat.{CLUSTER}.timeline", b'{"type":"backbeat.timeline.v1"}')
            await forger.flush()
            deadline = asyncio.get_running_loop().time() + 15
            async for event in client.events():
                if event.kind == "beat":
                    beats += 1
                elif event.kind == "tempo_changed":
                    changed = (event.bpm, event.at_beat)
                elif event.kind == "gap" and event.missed:
                    missed.append(event.missed)
                if (changed and beats >= 10) or asyncio.get_running_loop().time() > deadline:
                    break
            await asyncio.sleep(0.2)
        finally:
            await forger.close()
            await client.close()
        # The client reports a change at the first frame it sees at the new
        # tempo: the change's beat, unless that frame never arrived (a gap
        # covering it, e.g. a beat missed on a loaded machine). A frame of the
        # change's beat at the old tempo would fail here (no gap, a later beat).
        self.assertIsNotNone(changed, "no tempo change seen through the publications")
        assert changed is not None
        self.assertEqual(changed[0], 560, "the change seen through the publications")
        if changed[1] != scheduled.apply_at_beat:
            covered = any(first <= scheduled.apply_at_beat <= last for first, last in missed)
            self.assertTrue(covered and changed[1] > scheduled.apply_at_beat,
                            f"changed at beat {changed[1]}, scheduled {scheduled.apply_at_beat}, gaps {missed}")
        self.assertGreaterEqual(beats, 10)
        self.assertTrue(any("permissions violation" in e.lower() for e in errors), errors)


if __name__ == "__main__":
    unittest.main()
