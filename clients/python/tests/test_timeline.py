"""Unit tests of the Python client's timeline math and frame rules (no network)."""
import hashlib
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from backbeat_client import (FrameTracker, TimelineError, decode_frame, decode_timeline)  # noqa: E402

START = 1_757_000_000_000_000_000


def timeline_message(pending=None, bar=8, bpm=120, term=3):
    return json.dumps({
        "type": "backbeat.timeline.v1", "cluster_id": "c1",
        "epoch": {"start_beat": 0, "start_ns": START, "start_at": "x", "bpm": bpm},
        "bar": bar, "phases": ["plan", "work", "review"], "pending": pending, "term": term,
        "leader": "n1", "node_id": "n2", "degraded": False, "now_ns": START}).encode()


class TimelineTests(unittest.TestCase):
    def test_local_answers_match_the_contract(self):
        t = decode_timeline(timeline_message(), "c1")
        for k in range(40):
            instant = START + k * 500_000_000
            self.assertEqual(t.instant_ns(k), instant)
            self.assertEqual(t.beat_at(instant), k)
            self.assertEqual(t.beat_at(instant + 499_999_999), k)
            self.assertEqual(t.phase_at(instant), ["plan", "work", "review"][(k % 8) * 3 // 8])
            window = hashlib.sha256(f"c1:{k - k % 8}".encode()).hexdigest()[:32]
            self.assertEqual(t.window_id_at(instant), window)
            self.assertEqual(t.next_beat(instant).index, k + 1)
            self.assertEqual(t.next_downbeat(instant).index, (k // 8 + 1) * 8)
        self.assertEqual(t.next_phase_start("review", START).index, 6)

    def test_pending_change_and_versions(self):
        at_ns = START + 16 * 500_000_000
        t = decode_timeline(timeline_message({"at_beat": 16, "at_ns": at_ns, "at": "x", "bpm": 126}), "c1")
        self.assertEqual(t.instant_ns(16), at_ns)
        self.assertEqual(t.instant_ns(17), at_ns + 60_000_000_000 // 126)
        self.assertEqual(t.beat_at(at_ns + 60_000_000_000 // 126), 17)
        self.assertGreater(t.version, decode_timeline(timeline_message(), "c1").version)

    def test_hostile_timelines_are_refused(self):
        for data, reason in [
            (b"{", "malformed"), (timeline_message(bar=0), "out_of_range"), (timeline_message(bpm=0), "out_of_range"),
            (timeline_message({"at_beat": 17, "at_ns": 1, "bpm": 126}), "out_of_range"),
            (timeline_message({"at_beat": 16, "at_ns": 1, "bpm": 126}), "out_of_range"),
            (b'{"error":"x","code":"no_timeline"}', "no_timeline"),
        ]:
            with self.assertRaises(TimelineError) as caught:
                decode_timeline(data, "c1")
            self.assertEqual(caught.exception.reason, reason, data)


def frame(k, term=3, phase=None, degraded=False):
    t = decode_timeline(timeline_message(), "c1")
    import datetime
    deadline = datetime.datetime.fromtimestamp(t.instant_ns(k + 1) // 1_000_000 / 1000, datetime.timezone.utc)
    o = {"type": "backbeat.beatframe.v1", "cluster_id": "c1", "beat_index": k, "downbeat": k % 8 == 0,
         "phase": phase or t.phase_of(k), "hlc": "18f0a:0001:ab12",
         "deadline_at": deadline.strftime("%Y-%m-%dT%H:%M:%S.") + f"{deadline.microsecond // 1000:03d}Z",
         "tempo_bpm": 120, "window_id": t.window_id_of(k), "term": term}
    if degraded:
        o["degraded"] = True
    return json.dumps(o, separators=(",", ":")).encode()


class TrackerTests(unittest.TestCase):
    def started(self):
        """A tracker holding the confirmed timeline (term 3) that accepted beat 10."""
        t = decode_timeline(timeline_message(), "c1")
        tracker = FrameTracker("c1")
        tracker.note_timeline(t)
        at = lambda k: t.instant_ns(k) + 1_000_000  # noqa: E731
        self.assertEqual([e.kind for e in tracker.receive(frame(10), at(10), t)], ["beat"])
        return t, tracker, at

    def test_dedupe_gap_fence_and_refusals(self):
        t, tracker, at = self.started()
        self.assertEqual(tracker.receive(frame(10), at(10), t), [])
        kinds = [e.kind for e in tracker.receive(frame(13, term=4), at(13), t)]
        self.assertEqual(kinds, ["gap", "leader_changed", "beat"])
        self.assertEqual(tracker.fence_term, 3, "a frame's own term does not raise the fence")
        self.assertTrue(tracker.needs_confirmation)
        tracker.note_timeline(decode_timeline(timeline_message(term=4), "c1"))
        self.assertEqual(tracker.receive(frame(14, term=3), at(14), t)[0].reason, "stale_term")
        self.assertIn("degraded", [e.kind for e in tracker.receive(frame(14, term=4, degraded=True), at(14), t)])
        self.assertIn("mismatch", [e.kind for e in tracker.receive(frame(15, term=4, phase="x"), at(15), t)])
        self.assertEqual(tracker.receive(frame(16, term=200), at(16), t)[0].reason, "term_ahead")
        for data, reason in [(b"", "empty"), (b"[]", "not_an_object"), (b'{"type":"x"}', "wrong_type"),
                             (b"nope", "malformed_json"), (b'{"type":"backbeat.beatframe.v1"}', "missing_field"),
                             (frame(17).replace(b'"beat_index":17', b'"beat_index":-17'), "bad_beat_index"),
                             (frame(17).replace(b'"downbeat":false', b'"downbeat":0'), "bad_downbeat"),
                             (frame(17).replace(b'"tempo_bpm":120', b'"tempo_bpm":120.5'), "bad_tempo_bpm")]:
            self.assertEqual(tracker.receive(data, at(17), t)[0].reason, reason, data)

    def test_one_forged_frame_cannot_move_the_consumer(self):
        t, tracker, at = self.started()
        # A copy of the next real frame with term + 8, ahead of it: believed as the
        # pulse's echo policy would (a beat), but the fence stays where Raft confirmed it.
        self.assertIn("beat", [e.kind for e in tracker.receive(frame(11, term=11), at(10), t)])
        self.assertEqual(tracker.fence_term, 3)
        self.assertEqual([e.kind for e in tracker.receive(frame(12), at(12), t)], ["beat"])
        # A forged downbeat or phase is a mismatch, not a beat; the real frame then counts.
        forged = frame(13).replace(b'"downbeat":false', b'"downbeat":true')
        self.assertEqual([(e.kind, e.reason) for e in tracker.receive(forged, at(13), t)], [("mismatch", "downbeat")])
        self.assertEqual([e.kind for e in tracker.receive(frame(13), at(13), t)], ["beat"])
        # A fence above the cluster's term (confirmed earlier, then the cluster restarted
        # with lower terms): stale refusals repeat, and the next confirmed timeline heals it.
        tracker.note_timeline(decode_timeline(timeline_message(term=9), "c1"))
        for k in (14, 15):
            self.assertEqual(tracker.receive(frame(k), at(k), t)[0].reason, "stale_term")
        self.assertTrue(tracker.needs_confirmation)
        tracker.note_timeline(t)
        self.assertEqual(tracker.fence_term, 3)
        self.assertEqual([(e.kind, e.missed) for e in tracker.receive(frame(16), at(16), t)],
                         [("gap", (14, 15)), ("beat", None)])

    def test_decode_frame_reads_every_field(self):
        f = decode_frame(frame(8))
        self.assertEqual((f.beat_index, f.downbeat, f.phase, f.publisher, f.term), (8, True, "plan", "ab12", 3))
        self.assertEqual(f.scheduled_ns, START + 8 * 500_000_000)


if __name__ == "__main__":
    unittest.main()
