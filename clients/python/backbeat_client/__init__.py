"""BACKBEAT consumer for Python: the cluster's timeline in hand, frames as
confirmation (docs/protocol.md).

The timeline math is the contract's (requirements §1) in exact integer
arithmetic, the same as the pulse's PulseCore: a consumer answers beat,
phase, window id and downbeat at any instant, and the time to the next beat
or downbeat, without a round trip.  Frames are validated field by field
(the rules of the pulse's BeatFrameDecoder), duplicates dropped, `term`
fenced, and gaps, degraded frames, leader and tempo changes surfaced as
events.

One message cannot move a consumer (issue 20, item 2; the Swift client does
the same): only replies to this client's own timeline requests are adopted;
a publication on the timeline subject that claims something newer only
triggers such a request.  A frame is believed as far as the pulse's own echo
policy believes one (term at most MAX_TERM_LEAD above the confirmed
timeline's, index within a beat of now) and only when every field agrees with
the confirmed timeline (else a `mismatch` event, not a beat); the term fence
rises only with confirmed terms, never with a frame's claim.  A newer term on
a frame, a mismatch, or stale refusals that repeat trigger a re-check (one at
a time, at most one per RECHECK_INTERVAL_S; a publication's claim the answer
does not meet yet is asked again up to CLAIM_FOLLOW_UPS times, 50 ms apart),
and a confirmed timeline after repeated stale refusals resets the fence, so
a consumer always recovers.

    client = await BackbeatClient.connect("nats://127.0.0.1:4222", cluster="chorus-aus-01")
    print(client.beat(), client.phase(), client.window_id())
    async for event in client.events():
        ...
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Dict, Iterable, List, Optional, Tuple

from .signing import PublicationVerifier

__all__ = [
    "Timeline", "BeatInfo", "BeatPosition", "Frame", "FrameError", "TimelineError", "FrameTracker", "Event",
    "BackbeatClient", "NoPulseError", "TempoScheduled", "TempoRefused", "decode_frame", "decode_timeline",
    "PublicationVerifier", "timeline_request_subject", "control_request_subject",
]

NS_PER_MINUTE = 60_000_000_000
FRAME_TYPE = "backbeat.beatframe.v1"
TIMELINE_TYPE = "backbeat.timeline.v1"
MAX_BPM = 6000
SUPPORTED_NS = (0, 7_258_118_400_000_000_000)
SUPPORTED_BEATS = (0, 1 << 48)
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
MAX_TERM_LEAD = 8
MAX_BEATS_LATE = 4
STALE_REFUSALS_BEFORE_RECHECK = 2
RECHECK_INTERVAL_S = 0.2
CLAIM_FOLLOW_UPS = 4
CLAIM_FOLLOW_UP_S = 0.05


def timeline_request_subject(cluster: str) -> str:
    """Where a consumer asks for the timeline: the request subject, which the shipped NATS
    permissions let consumers publish on and pulses never publish on (docs/protocol.md)."""
    return f"backbeat.{cluster}.request.timeline"


def control_request_subject(cluster: str) -> str:
    """Where a tool asks for a tempo change (request/reply; the leader answers)."""
    return f"backbeat.{cluster}.request.control"


class TimelineError(ValueError):
    """A timeline message that cannot be used; `reason` is a snake_case code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class FrameError(ValueError):
    """A frame refused; `reason` is the same code the Swift decoder gives."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Epoch:
    start_beat: int
    start_ns: int
    bpm: int

    def instant_ns(self, k: int) -> int:
        # Floor division, as the pulse's 128-bit mulDivFloor.
        return self.start_ns + (k - self.start_beat) * NS_PER_MINUTE // self.bpm

    def beat_at(self, t: int) -> int:
        # Largest k with instant_ns(k) <= t: d <= floor(((u+1)*bpm - 1) / P).
        u = t - self.start_ns
        return self.start_beat + ((u + 1) * self.bpm - 1) // NS_PER_MINUTE


@dataclass(frozen=True)
class BeatInfo:
    index: int
    instant_ns: int
    deadline_ns: int
    downbeat: bool
    phase: str
    window_id: str
    bpm: int


@dataclass(frozen=True)
class BeatPosition:
    """Where an instant falls: `offset_ns` into beat `beat`, whose length is
    `length_ns` (exact; PulseCore's BeatPosition)."""
    beat: int
    offset_ns: int
    length_ns: int

    @property
    def beats(self) -> float:
        """`beat + offset/length` as one number (Link's beatAtTime); bit for bit the Swift and Go value."""
        return float(self.beat) + self.offset_ns / self.length_ns

    def phase(self, quantum: int) -> float:
        """The position in a cycle of `quantum` beats from beat 0, in [0, quantum) (Link's phaseAtTime)."""
        if quantum < 1:
            raise ValueError("quantum must be >= 1")
        return float(self.beat % quantum) + self.offset_ns / self.length_ns


def window_id(cluster_id: str, bar_start: int) -> str:
    return hashlib.sha256(f"{cluster_id}:{bar_start}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Timeline:
    """The committed timeline (`backbeat.timeline.v1`) and every local answer."""

    cluster_id: str
    epoch: Epoch
    pending: Optional[Epoch]
    bar: int
    phases: Tuple[str, ...]
    term: int
    leader: Optional[str]
    node_id: str
    degraded: bool
    now_ns: int

    # Ordering of versions: every committed change moves (epoch start, has pending) forward.
    @property
    def version(self) -> Tuple[int, int]:
        return (self.epoch.start_beat, 1 if self.pending else 0)

    def _epoch_for_beat(self, k: int) -> Epoch:
        return self.pending if self.pending and k >= self.pending.start_beat else self.epoch

    def instant_ns(self, k: int) -> int:
        return self._epoch_for_beat(k).instant_ns(k)

    def beat_at(self, t: int) -> int:
        if self.pending and t >= self.pending.start_ns:
            return self.pending.beat_at(t)
        return self.epoch.beat_at(t)

    def position(self, t: int) -> BeatPosition:
        """The fractional position at instant `t`: the beat in progress and how far into it."""
        k = self.beat_at(t)
        start = self.instant_ns(k)
        return BeatPosition(k, t - start, self.instant_ns(k + 1) - start)

    def bpm_of(self, k: int) -> int:
        return self._epoch_for_beat(k).bpm

    def is_downbeat(self, k: int) -> bool:
        return k % self.bar == 0

    def phase_of(self, k: int) -> str:
        return self.phases[(k % self.bar) * len(self.phases) // self.bar]

    def window_id_of(self, k: int) -> str:
        return window_id(self.cluster_id, k - k % self.bar)

    def info(self, k: int) -> BeatInfo:
        return BeatInfo(k, self.instant_ns(k), self.instant_ns(k + 1), self.is_downbeat(k), self.phase_of(k),
                        self.window_id_of(k), self.bpm_of(k))

    def info_at(self, t: int) -> BeatInfo:
        return self.info(self.beat_at(t))

    def phase_at(self, t: int) -> str:
        return self.phase_of(self.beat_at(t))

    def window_id_at(self, t: int) -> str:
        return self.window_id_of(self.beat_at(t))

    def next_beat(self, after_ns: int) -> BeatInfo:
        return self.info(self.beat_at(after_ns) + 1)

    def next_downbeat(self, after_ns: int) -> BeatInfo:
        k = self.beat_at(after_ns) + 1
        r = k % self.bar
        return self.info(k if r == 0 else k - r + self.bar)

    def next_phase_start(self, name: str, after_ns: int) -> Optional[BeatInfo]:
        if name not in self.phases:
            return None
        k = self.beat_at(after_ns) + 1
        for _ in range(self.bar + 1):
            if self.phase_of(k) == name and (self.is_downbeat(k) or self.phase_of(k - 1) != name):
                return self.info(k)
            k += 1
        return None


def _int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def decode_timeline(data: bytes, cluster_id: str) -> Timeline:
    """Validates a timeline message (GET /timeline body, reply, publication)."""
    if len(data) > 64 * 1024:
        raise TimelineError("malformed", "too large")
    try:
        o = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise TimelineError("malformed", str(e))
    if not isinstance(o, dict):
        raise TimelineError("malformed", "not an object")
    if "error" in o and "code" in o and "type" not in o:
        raise TimelineError(str(o["code"]), str(o["error"]))
    if o.get("type") != TIMELINE_TYPE:
        raise TimelineError("wrong_type")
    if o.get("cluster_id") != cluster_id:
        raise TimelineError("wrong_cluster", str(o.get("cluster_id")))
    ep = o.get("epoch")
    if not isinstance(ep, dict) or not _int(ep.get("start_beat"), *SUPPORTED_BEATS) \
            or not _int(ep.get("start_ns"), *SUPPORTED_NS) or not _int(ep.get("bpm"), 1, MAX_BPM):
        raise TimelineError("out_of_range", "epoch")
    epoch = Epoch(ep["start_beat"], ep["start_ns"], ep["bpm"])
    bar, phases = o.get("bar"), o.get("phases")
    if not isinstance(bar, int) or not _int(bar, 1, 1024):
        raise TimelineError("out_of_range", "bar")
    if not isinstance(phases, list) or not 1 <= len(phases) <= bar \
            or not all(isinstance(p, str) and 0 < len(p.encode()) <= 64 for p in phases):
        raise TimelineError("out_of_range", "phases")
    pending = None
    p = o.get("pending")
    if p is not None:
        if not isinstance(p, dict) or not _int(p.get("at_beat"), epoch.start_beat + 1, SUPPORTED_BEATS[1]) \
                or p["at_beat"] % bar != 0 or not _int(p.get("bpm"), 1, MAX_BPM):
            raise TimelineError("out_of_range", "pending")
        at_ns = epoch.instant_ns(p["at_beat"])
        if p.get("at_ns") != at_ns or not SUPPORTED_NS[0] <= at_ns <= SUPPORTED_NS[1]:
            raise TimelineError("out_of_range", "pending at_ns")
        pending = Epoch(p["at_beat"], at_ns, p["bpm"])
    term, leader, node_id = o.get("term"), o.get("leader"), o.get("node_id")
    if not isinstance(term, int) or not _int(term, 0, UINT64_MAX) or not (leader is None or isinstance(leader, str)) \
            or not isinstance(node_id, str) or not isinstance(o.get("degraded"), bool) \
            or not _int(o.get("now_ns"), -INT64_MAX, INT64_MAX):
        raise TimelineError("malformed", "term, leader, node_id, degraded or now_ns")
    return Timeline(cluster_id, epoch, pending, bar, tuple(phases), term, leader, node_id, o["degraded"],
                    o["now_ns"])


_FIELDS = ("type", "cluster_id", "beat_index", "downbeat", "phase", "hlc", "deadline_at", "tempo_bpm",
           "window_id", "term")
_RFC3339 = re.compile(rb"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{3})Z")
_WINDOW = re.compile(rb"[0-9a-f]{32}")
_HEX = re.compile(rb"[0-9a-f]+")
MAX_FRAME_BYTES = 4096
MAX_DEPTH = 16
MAX_STRING_BYTES = 256
_WS = b" \t\n\r"


def _unix_ms(text: bytes) -> Optional[int]:
    """Unix ms of exactly `YYYY-MM-DDTHH:MM:SS.mmmZ` (valid date, no leap second), as PulseCore reads it."""
    m = _RFC3339.fullmatch(text)
    if not m:
        return None
    y, mo, d, h, mi, s, ms = (int(g) for g in m.groups())
    if not 1 <= mo <= 12 or h >= 24 or mi >= 60 or s >= 60:
        return None
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    if not 1 <= d <= [31, 29 if leap else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][mo - 1]:
        return None
    # days_from_civil (H. Hinnant), as PulseCore's RFC3339Reader.
    yy = y - 1 if mo <= 2 else y
    era = (yy if yy >= 0 else yy - 399) // 400
    yoe = yy - era * 400
    doy = (153 * (mo - 3 if mo > 2 else mo + 9) + 2) // 5 + d - 1
    days = era * 146_097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719_468
    return ((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms


def _parse_hlc(text: bytes) -> Optional[Tuple[int, int, bytes]]:
    """(ms, counter, suffix) of `<ms hex>:<counter hex>:<suffix>` as PulseCore's HLCStamp.parse, or None."""
    c1 = text.find(b":")
    if c1 < 0:
        return None
    c2 = text.find(b":", c1 + 1)
    if c2 < 0:
        return None
    ms, counter, suffix = text[:c1], text[c1 + 1:c2], text[c2 + 1:]
    if not 1 <= len(ms) <= 16 or not _HEX.fullmatch(ms) or int(ms, 16) > INT64_MAX:
        return None
    if not 4 <= len(counter) <= 8 or (len(counter) > 4 and counter[:1] == b"0") or not _HEX.fullmatch(counter):
        return None
    return int(ms, 16), int(counter, 16), suffix


class _FrameParser:
    """A port of PulseCore's BeatFrameDecoder: one pass over the bytes, the
    first fault in the text decides the reason (the same codes, the same order)."""

    def __init__(self, data: bytes):
        self.b = data
        self.i = 0

    def peek(self) -> Optional[int]:
        return self.b[self.i] if self.i < len(self.b) else None

    def ws(self) -> None:
        while self.i < len(self.b) and self.b[self.i] in _WS:
            self.i += 1

    def expect(self, ch: int) -> None:
        if self.peek() != ch:
            raise FrameError("malformed_json")
        self.i += 1

    def frame(self) -> Dict[str, Any]:
        self.ws()
        first = self.peek()
        if first is None:
            raise FrameError("empty")
        if first != 0x7B:
            self.skip_value(0)
            self.ws()
            raise FrameError("not_an_object" if self.peek() is None else "malformed_json")
        self.i += 1
        fields: Dict[str, Any] = {}
        self.ws()
        if self.peek() == 0x7D:
            self.i += 1
        else:
            while True:
                self.ws()
                key = self.string()
                self.ws()
                self.expect(0x3A)
                self.ws()
                self.field(key, fields)
                self.ws()
                if self.peek() == 0x2C:
                    self.i += 1
                    continue
                self.expect(0x7D)
                break
        self.ws()
        if self.peek() is not None:
            raise FrameError("malformed_json")
        for f in _FIELDS:
            if f not in fields:
                raise FrameError("missing_field")
        return fields

    def field(self, key: bytes, fields: Dict[str, Any]) -> None:
        name = key.decode("utf-8", "strict") if _valid_utf8(key) else None
        if name is None or (name not in _FIELDS and name != "degraded"):
            self.skip_value(1)
            return
        if name in fields:
            raise FrameError("duplicate_field")
        bad = FrameError("bad_" + name)
        if name == "type":
            if self.peek() != 0x22 or self.string_value(name) != FRAME_TYPE:
                raise FrameError("wrong_type")
            fields[name] = FRAME_TYPE
        elif name in ("cluster_id", "phase"):
            text = self.string_value(name)
            if not text or (name == "cluster_id" and len(text.encode()) > 128):
                raise bad
            fields[name] = text
        elif name == "beat_index":
            v = self.integer(name)
            if not 0 <= v <= INT64_MAX:
                raise bad
            fields[name] = v
        elif name in ("downbeat", "degraded"):
            fields[name] = self.boolean(name)
        elif name == "hlc":
            parsed = _parse_hlc(self.string_value(name).encode())
            if parsed is None or not parsed[2]:
                raise bad
            fields[name] = parsed
        elif name == "deadline_at":
            ms = _unix_ms(self.string_value(name).encode())
            if ms is None:
                raise bad
            fields[name] = ms
        elif name == "tempo_bpm":
            v = self.integer(name)
            if not 1 <= v <= MAX_BPM:
                raise bad
            fields[name] = v
        elif name == "window_id":
            text = self.string_value(name)
            if not _WINDOW.fullmatch(text.encode()):
                raise bad
            fields[name] = text
        elif name == "term":
            v = self.integer(name)
            if v < 0:
                raise bad
            fields[name] = v

    def string_value(self, name: str) -> str:
        if self.peek() != 0x22:
            raise FrameError("bad_" + name)
        raw = self.string()
        if not _valid_utf8(raw):
            raise FrameError("malformed_json")
        return raw.decode()

    def boolean(self, name: str) -> bool:
        for word, value in ((b"true", True), (b"false", False)):
            if self.b.startswith(word, self.i):
                self.i += len(word)
                return value
        raise FrameError("bad_" + name)

    def integer(self, name: str) -> int:
        negative = self.peek() == 0x2D
        if negative:
            self.i += 1
        start = self.i
        while self._digit():
            self.i += 1
        digits = self.b[start:self.i]
        if not digits:
            raise FrameError("bad_" + name)
        magnitude = int(digits)
        if magnitude > UINT64_MAX:
            raise FrameError("bad_" + name)
        if digits[:1] == b"0" and len(digits) > 1:
            raise FrameError("malformed_json")
        if self.peek() in (0x2E, 0x65, 0x45):
            raise FrameError("bad_" + name)
        if negative and magnitude != 0:
            return -magnitude
        return -1 if negative else magnitude  # "-0" is negative too

    def string(self) -> bytes:
        self.expect(0x22)
        out = bytearray()
        while True:
            b = self.peek()
            if b is None:
                raise FrameError("malformed_json")
            self.i += 1
            if b == 0x22:
                return bytes(out)
            if b == 0x5C:
                e = self.peek()
                if e is None:
                    raise FrameError("malformed_json")
                self.i += 1
                simple = {0x22: 0x22, 0x5C: 0x5C, 0x2F: 0x2F, 0x62: 8, 0x66: 12, 0x6E: 10, 0x72: 13, 0x74: 9}
                if e in simple:
                    out.append(simple[e])
                elif e == 0x75:
                    out += self.unicode_escape()
                else:
                    raise FrameError("malformed_json")
            elif b < 0x20:
                raise FrameError("malformed_json")
            else:
                out.append(b)
            if len(out) > MAX_STRING_BYTES:
                raise FrameError("malformed_json")

    def hex4(self) -> int:
        chunk = self.b[self.i:self.i + 4]
        if len(chunk) < 4 or not all(c in b"0123456789abcdefABCDEF" for c in chunk):
            raise FrameError("malformed_json")
        self.i += 4
        return int(chunk, 16)

    def unicode_escape(self) -> bytes:
        scalar = self.hex4()
        if 0xD800 <= scalar <= 0xDBFF:
            if not self.b.startswith(b"\\u", self.i):
                raise FrameError("malformed_json")
            self.i += 2
            low = self.hex4()
            if not 0xDC00 <= low <= 0xDFFF:
                raise FrameError("malformed_json")
            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
        elif 0xDC00 <= scalar <= 0xDFFF:
            raise FrameError("malformed_json")
        return chr(scalar).encode()

    def skip_value(self, depth: int) -> None:
        b = self.peek()
        if b is None:
            raise FrameError("malformed_json")
        if b in (0x7B, 0x5B):
            if depth >= MAX_DEPTH:
                raise FrameError("too_deep")
            close = 0x7D if b == 0x7B else 0x5D
            self.i += 1
            self.ws()
            if self.peek() == close:
                self.i += 1
                return
            while True:
                self.ws()
                if close == 0x7D:
                    self.string()
                    self.ws()
                    self.expect(0x3A)
                    self.ws()
                self.skip_value(depth + 1)
                self.ws()
                if self.peek() == 0x2C:
                    self.i += 1
                    continue
                self.expect(close)
                return
        elif b == 0x22:
            self.string()
        elif b in (0x74, 0x66, 0x6E):
            for word in (b"true", b"false", b"null"):
                if self.b.startswith(word, self.i):
                    self.i += len(word)
                    return
            raise FrameError("malformed_json")
        else:
            self.skip_number()

    def _digit(self) -> bool:
        b = self.peek()
        return b is not None and 0x30 <= b <= 0x39

    def digits(self) -> None:
        if not self._digit():
            raise FrameError("malformed_json")
        while self._digit():
            self.i += 1

    def skip_number(self) -> None:
        if self.peek() == 0x2D:
            self.i += 1
        first = self.peek()
        if first is None or not 0x30 <= first <= 0x39:
            raise FrameError("malformed_json")
        if first == 0x30:
            self.i += 1
        else:
            self.digits()
        if self.peek() == 0x2E:
            self.i += 1
            self.digits()
        if self.peek() in (0x65, 0x45):
            self.i += 1
            if self.peek() in (0x2B, 0x2D):
                self.i += 1
            self.digits()


def _valid_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8", "strict")
        return True
    except UnicodeDecodeError:
        return False


@dataclass(frozen=True)
class Frame:
    cluster_id: str
    beat_index: int
    downbeat: bool
    phase: str
    hlc: str
    publisher: str
    deadline_ms: int
    tempo_bpm: int
    window_id: str
    term: int
    degraded: bool
    hlc_ms: int = 0
    hlc_counter: int = 0

    @property
    def scheduled_ns(self) -> int:
        """The instant as the frame states it: deadline minus one nominal period."""
        return self.deadline_ms * 1_000_000 - NS_PER_MINUTE // self.tempo_bpm


def decode_frame(data: bytes) -> Frame:
    """Validates a `backbeat.beatframe.v1` frame; raises FrameError(reason),
    the same reason PulseCore's BeatFrameDecoder gives (docs/vectors/frames.json)."""
    if len(data) > MAX_FRAME_BYTES:
        raise FrameError("too_large")
    try:
        o = _FrameParser(bytes(data)).frame()
    except RecursionError:
        raise FrameError("too_deep")
    ms, counter, suffix = o["hlc"]
    hlc = f"{ms:x}:{counter:04x}:{suffix.decode()}"
    return Frame(o["cluster_id"], o["beat_index"], o["downbeat"], o["phase"], hlc, suffix.decode(), o["deadline_at"],
                 o["tempo_bpm"], o["window_id"], o["term"], o.get("degraded", False), ms, counter)


@dataclass(frozen=True)
class Event:
    """kind: beat, gap, degraded, leader_changed, tempo_changed, tempo_scheduled,
    timeline_updated, refused, mismatch, connection."""
    kind: str
    frame: Optional[Frame] = None
    received_ns: int = 0
    missed: Optional[Tuple[int, int]] = None  # (first, last) for gap
    term: int = 0
    previous: int = 0
    bpm: int = 0
    at_beat: int = 0
    reason: str = ""
    timeline: Optional[Timeline] = None
    up: bool = False


class FrameTracker:
    """Dedupe, fence on term, gaps, comparison with the local timeline. Pure.

    `fence_term` is the highest term confirmed by a timeline reply
    (`note_timeline`); a frame's own term never raises it."""

    REFETCH = {"term_ahead", "index_ahead", "index_behind"}

    def __init__(self, cluster_id: str):
        self.cluster_id = cluster_id
        self.last_index = -1
        self.fence_term = 0
        self.stale_in_a_row = 0
        self.last_frame_term = 0
        self.last_bpm = 0
        self.duplicates = 0
        self.refused = 0
        self.accepted = 0

    def note_timeline(self, timeline: Timeline) -> None:
        """A timeline confirmed by a reply to this client's request: raises the
        fence, or after repeated stale refusals sets it (so a fence above the
        cluster's real term heals)."""
        if self.stale_in_a_row >= STALE_REFUSALS_BEFORE_RECHECK:
            self.fence_term = timeline.term
            self.stale_in_a_row = 0
        else:
            self.fence_term = max(self.fence_term, timeline.term)

    @property
    def needs_confirmation(self) -> bool:
        """The last accepted frame claimed an unconfirmed term, or stale refusals repeat."""
        return self.last_frame_term > self.fence_term or self.stale_in_a_row >= STALE_REFUSALS_BEFORE_RECHECK

    def adopt(self, timeline: Timeline, held: Optional[Timeline]) -> Tuple[Timeline, List[Event]]:
        """A confirmed timeline (a reply to this client's request, never a
        publication) against the one held: adopted unless older (a
        lagging node never rolls a committed change back); its term raises
        the fence either way. Returns (timeline to hold, events)."""
        self.note_timeline(timeline)
        if held is not None and (timeline.version < held.version or timeline == held):
            return held, []
        events: List[Event] = []
        if timeline.pending and (held is None or held.pending != timeline.pending):
            events.append(Event("tempo_scheduled", bpm=timeline.pending.bpm, at_beat=timeline.pending.start_beat))
        events.append(Event("timeline_updated", timeline=timeline, term=timeline.term))
        return timeline, events

    def _refuse(self, reason: str) -> List[Event]:
        self.refused += 1
        return [Event("refused", reason=reason)]

    def receive(self, data: bytes, received_ns: int, timeline: Optional[Timeline]) -> List[Event]:
        try:
            frame = decode_frame(data)
        except FrameError as e:
            return self._refuse(e.reason)
        if frame.cluster_id != self.cluster_id:
            return self._refuse("wrong_cluster")
        if frame.term < self.fence_term:
            self.stale_in_a_row += 1
            return self._refuse("stale_term")
        if timeline is not None:
            if frame.term > timeline.term + MAX_TERM_LEAD:
                return self._refuse("term_ahead")
            current = timeline.beat_at(received_ns)
            if frame.beat_index > current + 1:
                return self._refuse("index_ahead")
            if frame.beat_index < current - MAX_BEATS_LATE:
                return self._refuse("index_behind")
        elif abs(frame.scheduled_ns - received_ns) >= 60_000_000_000:
            return self._refuse("far_from_now")
        if timeline is not None:
            # A frame that contradicts the confirmed timeline is not a beat.
            field = disagreement(frame, timeline)
            if field:
                self.refused += 1
                return [Event("mismatch", frame=frame, reason=field)]
        if frame.beat_index <= self.last_index:
            self.duplicates += 1
            return []
        events: List[Event] = []
        if self.last_index >= 0 and frame.beat_index > self.last_index + 1:
            events.append(Event("gap", missed=(self.last_index + 1, frame.beat_index - 1)))
        if self.last_frame_term and frame.term > self.last_frame_term:
            events.append(Event("leader_changed", term=frame.term, previous=self.last_frame_term,
                                reason=frame.publisher))
        if self.last_bpm and frame.tempo_bpm != self.last_bpm:
            events.append(Event("tempo_changed", bpm=frame.tempo_bpm, previous=self.last_bpm,
                                at_beat=frame.beat_index))
        events.append(Event("beat", frame=frame, received_ns=received_ns))
        if frame.degraded:
            events.append(Event("degraded", frame=frame, received_ns=received_ns))
        self.last_index = frame.beat_index
        self.last_frame_term = frame.term
        self.stale_in_a_row = 0
        self.last_bpm = frame.tempo_bpm
        self.accepted += 1
        return events


def disagreement(frame: Frame, timeline: Timeline) -> Optional[str]:
    k = frame.beat_index
    if frame.downbeat != timeline.is_downbeat(k):
        return "downbeat"
    if frame.phase != timeline.phase_of(k):
        return "phase"
    if frame.tempo_bpm != timeline.bpm_of(k):
        return "tempo_bpm"
    if frame.deadline_ms != timeline.instant_ns(k + 1) // 1_000_000:
        return "deadline_at"
    if frame.window_id != timeline.window_id_of(k):
        return "window_id"
    return None


class NoPulseError(Exception):
    """`connect` gave up: no pulse answered on `subject` via `server` within
    the timeout (or, with `subject` empty, no NATS server was reachable)."""

    def __init__(self, server: str, subject: str, waited_s: float, timeout_s: float, cause: str):
        within = f"within {timeout_s:g} s (waited {waited_s:.3f} s"
        if subject:
            text = f"no pulse answered on {subject} via {server} {within}; last: {cause})"
        else:
            text = f"no NATS server reachable at {server} {within}): {cause}"
        super().__init__(text)
        self.server, self.subject, self.waited_s, self.timeout_s, self.cause = server, subject, waited_s, timeout_s, cause


@dataclass(frozen=True)
class TempoScheduled:
    """A tempo change the cluster accepted (202)."""
    tempo_bpm: int
    previous_bpm: int
    apply_at_beat: int
    apply_at: str
    justification: str


class TempoRefused(Exception):
    """The cluster's refusal of a tempo request, unchanged: the HTTP status it
    stands for, the machine code (`change_pending`, `out_of_range`, ...) and the sentence."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"tempo refused: {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


DRIFT_PER_SECOND_NS = 200_000  # drift allowed between two clocks: 200 ppm


class BackbeatClient:
    """A consumer of one cluster's beat over NATS (nats-py). Use `connect`."""

    def __init__(self, nc: Any, cluster: str, request_timeout: float,
                 local_clock: Optional[Callable[[], int]] = None,
                 verifier: Optional[PublicationVerifier] = None):
        self.nc = nc
        self.verifier = verifier
        self.signature_refusals = 0
        self.cluster = cluster
        self.request_timeout = request_timeout
        self.timeline: Optional[Timeline] = None
        self.tracker = FrameTracker(cluster)
        self.clock_offset_ns = 0
        self.clock_samples_taken = 0
        self._local_clock = local_clock or time.time_ns
        self._sampler: Optional[asyncio.Task[None]] = None
        self._last_error = ""
        self._clock_samples: List[Tuple[int, int, int]] = []
        self._delivery: List[int] = []
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=4096)
        self._refetching = False
        self._refetch_again = False
        self._last_refetch = -1e9  # time.monotonic() of the last re-check's start
        self._refetch_task: Optional[asyncio.Task[None]] = None
        self._claimed: Optional[Tuple[Tuple[int, int], int]] = None  # (version, term) a publication claimed, not yet confirmed
        self._subs: List[Any] = []

    @classmethod
    async def connect(cls, servers: Any, cluster: str = "chorus-aus-01", request_timeout: float = 2.0,
                      connect_timeout: float = 5.0, clock_sample_interval: float = 2.0,
                      local_clock: Optional[Callable[[], int]] = None,
                      public_keys: Optional[Iterable[object]] = None,
                      **nats_options: Any) -> "BackbeatClient":
        """Connects (nats-py options pass through: user_credentials, nkeys_seed, tls, ...), fetches the
        timeline and subscribes, all within `connect_timeout` seconds; otherwise raises one
        NoPulseError naming the server, the subject and the wait. The clock offset is then sampled
        every `clock_sample_interval` seconds (0: never). `local_clock` (ns) is for tests.
        `public_keys` (PEM strings or raw 32-byte Ed25519 keys; old and new during a rotation):
        only publications signed by one of them are accepted (a cluster run with -sign-key); the
        others are refused (`unsigned`, `unknown_key`, `bad_signature`) and counted in
        `signature_refusals`."""
        import nats  # type: ignore[import-untyped,import-not-found,unused-ignore]
        from nats.errors import NoServersError
        verifier = PublicationVerifier(public_keys) if public_keys is not None else None
        client = cls(None, cluster, request_timeout, local_clock, verifier)
        started = time.monotonic()
        deadline = started + connect_timeout
        listed = servers if isinstance(servers, str) else ",".join(servers)
        # NATS itself, until the deadline (nats-py retries the servers, reconnect_time_wait apart).
        try:
            client.nc = await asyncio.wait_for(nats.connect(
                servers, max_reconnect_attempts=-1, reconnect_time_wait=0.25, allow_reconnect=True,
                connect_timeout=max(0.05, min(2.0, connect_timeout)), disconnected_cb=client._disconnected,
                reconnected_cb=client._reconnected, error_cb=client._error, **nats_options), connect_timeout)
        except (NoServersError, OSError, asyncio.TimeoutError) as e:
            cause = client._last_error or str(e) or type(e).__name__
            raise NoPulseError(listed, "", time.monotonic() - started, connect_timeout, cause) from None
        # The first timeline, then the subscriptions (every frame is judged with it; NATS answers
        # "no responders" at once while no pulse listens).
        subject = timeline_request_subject(cluster)
        last = "no time left to ask"
        while time.monotonic() < deadline:
            try:
                await client.fetch_timeline(timeout=max(0.001, min(request_timeout, deadline - time.monotonic())))
                last = ""
                break
            except asyncio.TimeoutError:
                last = "timeout"
            except Exception as e:  # no responders, a node without a committed timeline yet
                last = str(e) or type(e).__name__
                await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        if last:
            server = client.nc.connected_url.geturl() if client.nc.connected_url else listed
            await client.nc.close()
            raise NoPulseError(server, subject, time.monotonic() - started, connect_timeout, last)
        client._subs.append(await client.nc.subscribe(f"backbeat.{cluster}.beat", cb=client._on_beat))
        client._subs.append(await client.nc.subscribe(f"backbeat.{cluster}.timeline", cb=client._on_timeline))
        await client.nc.flush(timeout=max(0.1, deadline - time.monotonic()))  # subscribed at the server on return
        if clock_sample_interval > 0:
            client._sampler = asyncio.get_running_loop().create_task(client._sample_clock(clock_sample_interval))
        return client

    async def _sample_clock(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.fetch_timeline()
            except Exception:
                pass  # asked again next time

    async def _error(self, e: BaseException) -> None:
        self._last_error = str(e) or type(e).__name__  # the cause connect's NoPulseError names

    async def request_tempo(self, bpm: int, justification: str, token: Optional[str] = None) -> TempoScheduled:
        """Asks the cluster to change the tempo (request/reply on the control request subject; the
        leader answers). Returns the scheduled change, or raises TempoRefused with the API's status and code
        unchanged. `token` is the admin token when the cluster has one."""
        body = {"tempo_bpm": bpm, "justification": justification}
        if token is not None:
            body["token"] = token
        msg = await self._request(control_request_subject(self.cluster), json.dumps(body).encode(),
                                  self.request_timeout)
        reply = json.loads(msg.data)
        if reply.get("status") != 202 or "code" in reply:
            raise TempoRefused(reply.get("status", 0), reply.get("code", ""), reply.get("error", ""))
        return TempoScheduled(reply["tempo_bpm"], reply["previous_bpm"], reply["apply_at_beat"],
                              reply.get("apply_at", ""), reply.get("justification", ""))

    def clock_offset(self) -> Optional[Tuple[int, int, int]]:
        """(offset_ns, bound_ns, samples): the true offset to the answering node's timeline clock is
        within offset ± bound (half the best sample's round trip, plus 200 ppm drift since it was
        taken); None before any sample."""
        if not self._clock_samples:
            return None
        rtt, offset, taken = min(self._clock_samples)
        age_s = max(0, self._local_clock() - taken) // 1_000_000_000
        return offset, (rtt + 1) // 2 + (age_s + 1) * DRIFT_PER_SECOND_NS, self.clock_samples_taken

    async def close(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        await self.nc.close()
        self._emit(Event("closed"))

    @staticmethod
    def local_ns() -> int:
        return time.time_ns()

    def now(self) -> int:
        """The timeline's clock: local wall clock plus the measured offset."""
        return self._local_clock() + self.clock_offset_ns

    @property
    def delivery_offset_ns(self) -> Optional[int]:
        """Median arrival minus instant of the last 64 frames."""
        if not self._delivery:
            return None
        return sorted(self._delivery)[len(self._delivery) // 2]

    async def _request(self, subject: str, payload: bytes, timeout: float) -> Any:
        """Request/reply on an inbox of its own: `_INBOX.` and 128 random bits, subscribed for
        this one request and dropped after its first reply. nats-py's own request inboxes share
        one prefix per connection and a NUID token whose next values can be guessed, so on a
        server where anyone may publish on `_INBOX.>` another consumer who saw one reply could
        answer the next request first (docs/security.md); a random inbox cannot be aimed at.
        Raises nats-py's TimeoutError or NoRespondersError, as `nc.request` does."""
        from nats import errors  # type: ignore[import-untyped,import-not-found,unused-ignore]
        inbox = "_INBOX." + secrets.token_hex(16)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def on_reply(msg: Any) -> None:
            if not answer.done():
                answer.set_result(msg)

        sub = await self.nc.subscribe(inbox, cb=on_reply)
        try:
            # SUB and PUB on one connection: the server subscribes before it routes the request.
            await self.nc.publish(subject, payload, reply=inbox)
            msg = await asyncio.wait_for(answer, timeout)
        except asyncio.TimeoutError:
            raise errors.TimeoutError from None
        finally:
            try:
                await sub.unsubscribe()
            except Exception:
                pass  # the connection closed: the subscription went with it
        headers = getattr(msg, "headers", None)
        if headers and headers.get("Status") == "503":
            raise errors.NoRespondersError
        return msg

    async def fetch_timeline(self, timeout: Optional[float] = None) -> Timeline:
        sent = self._local_clock()
        msg = await self._request(timeline_request_subject(self.cluster), b"{}",
                                  self.request_timeout if timeout is None else timeout)
        answered = self._local_clock()
        refusal = self._signature_refusal(msg.data)
        if refusal is not None:
            raise TimelineError(refusal, "the timeline reply's signature")
        timeline = decode_timeline(msg.data, self.cluster)
        rtt = answered - sent
        offset = timeline.now_ns - (sent + rtt // 2)
        if 0 <= rtt < 10_000_000_000 and abs(offset) < 60_000_000_000 and timeline.now_ns > 0:
            self.clock_samples_taken += 1
            self._clock_samples = (self._clock_samples + [(rtt, offset, answered)])[-8:]
            self.clock_offset_ns = min(self._clock_samples)[1]
        self._adopt(timeline)
        return self._t()

    def _adopt(self, timeline: Timeline) -> None:
        self.timeline, events = self.tracker.adopt(timeline, self.timeline)
        for event in events:
            self._emit(event)

    def _refetch(self) -> None:
        """A re-check: one at a time, RECHECK_INTERVAL_S apart, and one more
        when asked for while one runs (a real change is never missed)."""
        if self._refetching:
            self._refetch_again = True
            return
        self._refetching = True

        async def run() -> None:
            try:
                while True:
                    self._refetch_again = False
                    wait = self._last_refetch + RECHECK_INTERVAL_S - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    follow_ups = 0
                    for _ in range(30):
                        self._last_refetch = time.monotonic()
                        try:
                            await self.fetch_timeline()
                        except Exception:
                            await asyncio.sleep(1)
                            continue
                        # A publication claimed more than the answer gave (the first reply may
                        # come from a node a heartbeat behind): ask again shortly, a few times,
                        # then let the claim go (a forgery).
                        if self._claim_unmet() and follow_ups < CLAIM_FOLLOW_UPS:
                            follow_ups += 1
                            await asyncio.sleep(CLAIM_FOLLOW_UP_S)
                            continue
                        self._claimed = None
                        break
                    if not self._refetch_again:
                        return
            finally:
                self._refetching = False

        self._refetch_task = asyncio.get_running_loop().create_task(run())

    def _emit(self, event: Event) -> None:
        if self._queue.full():
            self._queue.get_nowait()  # keep the newest
        self._queue.put_nowait(event)

    def _signature_refusal(self, data: bytes) -> Optional[str]:
        """Why `data` is refused under the cluster's keys (counted), or None (or no keys given)."""
        refusal = self.verifier.check(data) if self.verifier is not None else None
        if refusal is not None:
            self.signature_refusals += 1
        return refusal

    async def _on_beat(self, msg: Any) -> None:
        refusal = self._signature_refusal(msg.data)
        if refusal is not None:
            self._emit(Event("refused", reason=refusal))
            return
        received = self._local_clock() + self.clock_offset_ns
        events = self.tracker.receive(msg.data, received, self.timeline)
        refetch = self.timeline is None
        for event in events:
            if event.kind == "beat" and self.timeline is not None and event.frame is not None:
                self._delivery = (self._delivery + [received - self.timeline.instant_ns(event.frame.beat_index)])[-64:]
            if event.kind in ("mismatch", "leader_changed") or (
                    event.kind == "refused" and event.reason in FrameTracker.REFETCH):
                refetch = True
            self._emit(event)
        if refetch or self.tracker.needs_confirmation:
            self._refetch()

    async def _on_timeline(self, msg: Any) -> None:
        if msg.reply:
            return  # a request from another consumer
        # A publication: the leader's, or anyone's who may publish here. What
        # it claims newer is confirmed by a request before anything changes.
        refusal = self._signature_refusal(msg.data)
        if refusal is not None:
            self._emit(Event("refused", reason="timeline_" + refusal))
            return
        try:
            claimed = decode_timeline(msg.data, self.cluster)
        except TimelineError as e:
            self._emit(Event("refused", reason="timeline_" + e.reason))
            return
        held = self.timeline
        if held is not None and claimed.version <= held.version and claimed.term <= held.term:
            return
        previous = self._claimed or (claimed.version, claimed.term)
        self._claimed = (max(previous[0], claimed.version), max(previous[1], claimed.term))
        self._refetch()

    def _claim_unmet(self) -> bool:
        """The held timeline is older than what a publication claimed."""
        if self._claimed is None:
            return False
        held = self.timeline
        return held is None or held.version < self._claimed[0] or held.term < self._claimed[1]

    async def _disconnected(self) -> None:
        self._emit(Event("connection", up=False))

    async def _reconnected(self) -> None:
        self._emit(Event("connection", up=True))
        self._refetch()

    async def events(self) -> AsyncIterator[Event]:
        """Every event in order, until the client is closed."""
        while True:
            event = await self._queue.get()
            if event.kind == "closed":
                return
            yield event

    # Local answers (no round trip); `at` is on the timeline clock, default now.
    def _t(self) -> Timeline:
        if self.timeline is None:
            raise TimelineError("no_timeline", "not fetched yet")
        return self.timeline

    def beat(self, at: Optional[int] = None) -> BeatInfo:
        return self._t().info_at(self.now() if at is None else at)

    def phase(self, at: Optional[int] = None) -> str:
        return self._t().phase_at(self.now() if at is None else at)

    def window_id(self, at: Optional[int] = None) -> str:
        return self._t().window_id_at(self.now() if at is None else at)

    def is_downbeat(self, at: Optional[int] = None) -> bool:
        return self.beat(at).downbeat

    def next_beat(self, after: Optional[int] = None) -> BeatInfo:
        return self._t().next_beat(self.now() if after is None else after)

    def next_downbeat(self, after: Optional[int] = None) -> BeatInfo:
        return self._t().next_downbeat(self.now() if after is None else after)

    def position(self, at: Optional[int] = None) -> BeatPosition:
        """The exact fractional position: the beat in progress, the ns into it and its length."""
        return self._t().position(self.now() if at is None else at)

    def beat_at_time(self, at: Optional[int] = None) -> float:
        """The position as one number of beats (Ableton Link's beatAtTime)."""
        return self.position(at).beats

    def phase_at_time(self, at: Optional[int] = None, quantum: Optional[int] = None) -> float:
        """The position within a cycle of `quantum` beats (default the bar), in [0, quantum) (Link's phaseAtTime)."""
        t = self._t()
        return t.position(self.now() if at is None else at).phase(quantum or t.bar)

    async def wait_for_next_downbeat(self) -> BeatInfo:
        return await self._wait(lambda t, now: t.next_downbeat(now))

    async def wait_for_phase(self, name: str) -> BeatInfo:
        def target(t: Timeline, now: int) -> BeatInfo:
            start = t.next_phase_start(name, now)
            if start is None:
                raise TimelineError("unknown_phase", name)
            return start
        return await self._wait(target)

    async def _wait(self, target: Callable[[Timeline, int], BeatInfo]) -> BeatInfo:
        timeline = self._t()
        goal = target(timeline, self.now())
        while True:
            remaining = goal.instant_ns - self.now()
            if remaining <= 0:
                return goal
            await asyncio.sleep(min(remaining, 50_000_000) / 1e9)
            if self.timeline is not None and self.timeline != timeline:
                timeline = self.timeline
                goal = timeline.info(goal.index)
