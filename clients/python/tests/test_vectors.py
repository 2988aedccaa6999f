"""The Python client against the shared conformance vectors (docs/vectors,
generated from the node's own code): every case is recomputed from the file's
inputs and must give the file's outputs, field by field."""
import json
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.join(HERE, "..", "..", "..", "docs", "vectors")
sys.path.insert(0, os.path.join(HERE, ".."))
from backbeat_client import (Epoch, FrameError, FrameTracker, Timeline, TimelineError, decode_frame,  # noqa: E402
                             decode_timeline)


def load(name):
    with open(os.path.join(VECTORS, name)) as f:
        return json.load(f)


def timeline_of(spec, term=3):
    """A Timeline from a vector's spec, through the same validation as a message."""
    e, p = spec["epoch"], spec.get("pending")
    epoch = Epoch(e["start_beat"], e["start_ns"], e["bpm"])
    message = {"type": "backbeat.timeline.v1", "cluster_id": spec["cluster_id"], "epoch": e, "bar": spec["bar"],
               "phases": spec["phases"], "term": term, "leader": "n1", "node_id": "", "degraded": False, "now_ns": 0,
               "pending": None}
    if p is not None:
        message["pending"] = {"at_beat": p["at_beat"], "bpm": p["bpm"],
                              "at_ns": epoch.instant_ns(p["at_beat"]) if p["bpm"] > 0 else 0}
    return decode_timeline(json.dumps(message).encode(), spec["cluster_id"])


def event_spec(e):
    """An Event in the vectors' form (docs/vectors/README.md)."""
    out = {"kind": e.kind}
    if e.kind == "beat":
        out.update(beat=e.frame.beat_index, term=e.frame.term, publisher=e.frame.publisher)
    elif e.kind == "gap":
        out.update(first=e.missed[0], last=e.missed[1])
    elif e.kind == "degraded":
        out.update(beat=e.frame.beat_index)
    elif e.kind == "leader_changed":
        out.update(term=e.term, previous_term=e.previous, publisher=e.reason)
    elif e.kind == "tempo_changed":
        out.update(bpm=e.bpm, previous_bpm=e.previous, at_beat=e.at_beat)
    elif e.kind == "tempo_scheduled":
        out.update(bpm=e.bpm, at_beat=e.at_beat)
    elif e.kind == "timeline_updated":
        out.update(term=e.term)
    elif e.kind == "refused":
        out.update(reason=e.reason)
    elif e.kind == "mismatch":
        out.update(beat=e.frame.beat_index, field=e.reason)
    return out


class VectorTests(unittest.TestCase):
    def test_timeline(self):
        cases = load("timeline.json")["cases"]
        self.assertGreaterEqual(len(cases), 5)
        for c in cases:
            t = timeline_of(c["timeline"])
            for q in c["at"]:
                p = t.position(q["t_ns"])
                nb, nd = t.next_beat(q["t_ns"]), t.next_downbeat(q["t_ns"])
                got = {"t_ns": q["t_ns"], "beat": p.beat, "offset_ns": p.offset_ns, "length_ns": p.length_ns,
                       "beats": p.beats, "quantum": q["quantum"], "phase_in_quantum": p.phase(q["quantum"]),
                       "phase": t.phase_at(q["t_ns"]), "downbeat": t.info_at(q["t_ns"]).downbeat,
                       "window_id": t.window_id_at(q["t_ns"]), "bpm": t.bpm_of(p.beat), "next_beat": nb.index,
                       "next_beat_ns": nb.instant_ns, "next_downbeat": nd.index, "next_downbeat_ns": nd.instant_ns}
                self.assertEqual(got, q, f"{c['name']} at {q['t_ns']}")
            for b in c["beats"]:
                k = b["beat"]
                i = t.info(k)
                got = {"beat": k, "instant_ns": i.instant_ns, "deadline_ns": i.deadline_ns,
                       "deadline_ms": i.deadline_ns // 1_000_000, "downbeat": i.downbeat, "phase": i.phase,
                       "window_id": i.window_id, "bpm": i.bpm, "bar_start": k - k % t.bar}
                self.assertEqual(got, b, f"{c['name']} beat {k}")

    def test_tempo(self):
        cases = load("tempo.json")["cases"]
        self.assertGreaterEqual(len(cases), 5)
        for c in cases:
            spec = dict(c["timeline"], pending=c["change"])
            try:
                t = timeline_of(spec)
                result = "scheduled"
            except TimelineError as e:
                self.assertEqual(e.reason, "out_of_range", c["name"])
                result = None
            if c["result"] == "scheduled":
                self.assertEqual(result, "scheduled", c["name"])
            else:
                # The client has one code for every refused change; the node's reason is in the file.
                self.assertIsNone(result, c["name"])
                continue
            self.assertEqual(t.pending.start_ns, c["at_ns"], c["name"])
            for q in c["instants"]:
                self.assertEqual({"beat": q["beat"], "instant_ns": t.instant_ns(q["beat"]), "bpm": t.bpm_of(q["beat"])},
                                 q, c["name"])
            for q in c["positions"]:
                p = t.position(q["t_ns"])
                self.assertEqual({"t_ns": q["t_ns"], "beat": p.beat, "offset_ns": p.offset_ns,
                                  "length_ns": p.length_ns}, q, c["name"])

    def test_frames(self):
        cases = load("frames.json")["cases"]
        self.assertGreaterEqual(len(cases), 40)
        for c in cases:
            data = c["frame"].encode() if c.get("frame") is not None else bytes.fromhex(c["frame_hex"])
            try:
                f = decode_frame(data)
            except FrameError as e:
                self.assertEqual(e.reason, c["result"], c["name"])
                continue
            self.assertEqual("accepted", c["result"], c["name"])
            got = {"cluster_id": f.cluster_id, "beat_index": f.beat_index, "downbeat": f.downbeat, "phase": f.phase,
                   "hlc_ms": f.hlc_ms, "hlc_counter": f.hlc_counter, "publisher": f.publisher,
                   "deadline_ms": f.deadline_ms, "tempo_bpm": f.tempo_bpm, "window_id": f.window_id, "term": f.term,
                   "degraded": f.degraded}
            self.assertEqual(got, c["decoded"], c["name"])

    def test_sequences(self):
        cases = load("sequences.json")["cases"]
        self.assertGreaterEqual(len(cases), 10)
        for c in cases:
            tracker = FrameTracker(c["cluster_id"])
            held = None
            for i, step in enumerate(c["steps"]):
                if step.get("timeline") is not None:
                    try:
                        held, events = tracker.adopt(decode_timeline(step["timeline"].encode(), c["cluster_id"]), held)
                    except TimelineError as e:
                        events = [type("E", (), {"kind": "refused", "reason": "timeline_" + e.reason})()]
                else:
                    events = tracker.receive(step["frame"].encode(), step["received_ns"], held)
                state = {"last_index": tracker.last_index, "fence_term": tracker.fence_term,
                         "accepted": tracker.accepted, "duplicates": tracker.duplicates, "refused": tracker.refused}
                if held is not None:
                    state["timeline_version"] = list(held.version)
                where = f"{c['name']}, step {i}"
                self.assertEqual([event_spec(e) for e in events], step["events"], where)
                self.assertEqual(state, step["state"], where)


if __name__ == "__main__":
    unittest.main()
