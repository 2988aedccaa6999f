"""Issue 20: the Python client's requests (timeline and tempo) use an inbox of their own,
`_INBOX.` and 128 random bits, subscribed for the one request: another consumer that saw
every earlier reply (a server where anyone may publish on `_INBOX.>`) can aim a forged reply
at no inbox the client will listen on.  Against a NATS connection double that routes
messages as a server does (exact subjects; a message to a subject nobody subscribes is
lost) and an attacker that answers every inbox it has seen and nats-py's predictable ones.
No network.
"""
import asyncio
import json
import os
import re
import sys
import unittest
from types import SimpleNamespace

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from backbeat_client import BackbeatClient  # noqa: E402
from test_timeline import timeline_message  # noqa: E402

import nats.errors  # noqa: E402

RANDOM_INBOX = re.compile(r"^_INBOX\.[0-9a-f]{32}$")


class Sub:
    def __init__(self, conn, subject, cb):
        self.conn, self.subject, self.cb = conn, subject, cb

    async def unsubscribe(self):
        self.conn.subs.remove(self)


class Conn:
    """A connection on a server: publish delivers to the exact subscribers (none: dropped).
    `answer(subject, payload, reply)` plays the cluster; `forge()` the attacker, who may publish
    anywhere and has seen every reply subject so far."""

    def __init__(self, answer):
        self.subs, self.log, self.seen, self.delivered_forgeries = [], [], [], 0
        self.answer = answer

    async def subscribe(self, subject, cb):
        sub = Sub(self, subject, cb)
        self.subs.append(sub)
        return sub

    async def deliver(self, subject, data, headers=None):
        for sub in [s for s in self.subs if s.subject == subject]:
            if b'"bpm":61' in data:
                self.delivered_forgeries += 1
            await sub.cb(SimpleNamespace(subject=subject, data=data, headers=headers, reply=""))

    async def forge(self):
        forged = timeline_message(bpm=61).replace(b'"c1"', b'"chorus-aus-01"')
        targets = list(self.seen)
        # nats-py's own scheme: one prefix per connection, a counter-like token after it.
        for subject in self.seen:
            prefix, _, token = subject.rpartition(".")
            targets += [f"{prefix}.{int(token) + n}" for n in (1, 2, 3)] if token.isdigit() else []
            targets += [f"{prefix}.{token}{n}" for n in range(3)] + [f"{prefix}.*"]
        for subject in targets:
            await self.deliver(subject, forged)

    async def publish(self, subject, payload, reply=""):
        listening = [s.subject for s in self.subs]
        self.log.append((subject, reply, reply in listening))
        await self.forge()  # the attacker races the cluster, with all it knows
        await self.answer(self, subject, payload, reply)
        self.seen.append(reply)


async def cluster_answers(conn, subject, payload, reply):
    if subject.endswith(".request.timeline"):
        await conn.deliver(reply, timeline_message(bpm=120, term=3).replace(b'"c1"', b'"chorus-aus-01"'))
    elif subject.endswith(".request.control"):
        body = json.loads(payload)
        await conn.deliver(reply, json.dumps({"status": 202, "tempo_bpm": body["tempo_bpm"], "at_beat": 64,
                                              "at_ns": 1, "at": "x", "previous_bpm": 120}).encode())


class RandomInboxTests(unittest.TestCase):
    def test_every_request_has_its_own_random_inbox(self):
        conn = Conn(cluster_answers)
        client = BackbeatClient(conn, "chorus-aus-01", 1.0)

        async def run():
            for _ in range(50):
                timeline = await client.fetch_timeline()
                self.assertEqual(timeline.bpm_of(0), 120, "a forged reply was adopted")
            try:
                await client.request_tempo(130, "inbox test")
            except Exception:  # the double's answer is not what this test is about
                pass
        asyncio.run(run())
        inboxes = [reply for _, reply, _ in conn.log]
        self.assertEqual(len(inboxes), 51)
        for inbox in inboxes:
            self.assertRegex(inbox, RANDOM_INBOX)
        self.assertEqual(len(set(inboxes)), len(inboxes), "an inbox was used twice")
        self.assertTrue(all(subscribed for _, _, subscribed in conn.log), "subscribed before the request left")
        self.assertEqual(conn.subs, [], "each inbox dropped after its reply")
        self.assertEqual(conn.delivered_forgeries, 0, "the attacker reached an inbox the client listened on")
        self.assertEqual(client.timeline.bpm_of(0), 120)

    def test_timeout_and_no_responders_raise_as_nats_py_does(self):
        async def silent(conn, subject, payload, reply):
            pass

        async def no_responders(conn, subject, payload, reply):
            await conn.deliver(reply, b"", headers={"Status": "503"})

        async def run(answer, error):
            conn = Conn(answer)
            client = BackbeatClient(conn, "chorus-aus-01", 0.05)
            with self.assertRaises(error):
                await client.fetch_timeline()
            self.assertEqual(conn.subs, [], "the inbox dropped after a failed request too")
        asyncio.run(run(silent, nats.errors.TimeoutError))
        asyncio.run(run(no_responders, nats.errors.NoRespondersError))


if __name__ == "__main__":
    unittest.main()
