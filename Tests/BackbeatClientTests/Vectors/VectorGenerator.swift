// The conformance vectors' generator: every expected value comes from the
// node's own code (PulseCore's Timeline, BeatFrameEncoder, BeatFrameDecoder,
// WindowId) and the Swift client's FrameTracker. `BACKBEAT_WRITE_VECTORS=1
// swift test --filter VectorTests` rewrites docs/vectors/*.json from it.
import BackbeatClient
import Foundation
import PulseCore

enum VectorGenerator {
    static let start: Int64 = 1_757_000_000_000_000_000

    // MARK: Shared pieces

    static func timeline(_ spec: TimelineSpec, term: UInt64 = 3) throws -> BeatTimeline {
        try BeatTimeline(
            clusterId: spec.cluster_id,
            epoch: TempoEpoch(startBeat: spec.epoch.start_beat, startNs: spec.epoch.start_ns, bpm: spec.epoch.bpm),
            pending: spec.pending.map { TempoChange(atBeat: $0.at_beat, bpm: $0.bpm) }, bar: spec.bar,
            phases: spec.phases, term: term, leader: "n1")
    }

    static func timeQuery(_ t: BeatTimeline, _ ns: Int64, quantum: Int64) -> TimeQuery {
        let p = t.timeline.position(atNs: ns)
        let next = t.nextBeat(after: ns)
        let downbeat = t.nextDownbeat(after: ns)
        return TimeQuery(
            t_ns: ns, beat: p.beat, offset_ns: p.offsetNs, length_ns: p.lengthNs, beats: p.beats, quantum: quantum,
            phase_in_quantum: p.phase(quantum: quantum), phase: t.phase(at: ns), downbeat: t.isDownbeat(at: ns),
            window_id: t.windowId(at: ns), bpm: t.bpm(ofBeat: p.beat), next_beat: next.index,
            next_beat_ns: next.instantNs, next_downbeat: downbeat.index, next_downbeat_ns: downbeat.instantNs)
    }

    static func beatQuery(_ t: BeatTimeline, _ k: Int64) -> BeatQuery {
        BeatQuery(
            beat: k, instant_ns: t.instantNs(ofBeat: k), deadline_ns: t.timeline.deadlineNs(ofBeat: k),
            deadline_ms: t.timeline.deadlineUnixMs(ofBeat: k), downbeat: t.isDownbeat(k), phase: t.phase(ofBeat: k),
            window_id: t.windowId(ofBeat: k), bpm: t.bpm(ofBeat: k), bar_start: t.timeline.barStart(k))
    }

    /// A frame as the node encodes it (BeatFrameEncoder), for beat `k` of `t`.
    static func frame(
        _ t: BeatTimeline, _ k: Int64, term: UInt64 = 3, degraded: Bool = false, nodeId: String = "n1-ab12",
        hlcCounter: UInt32 = 1
    ) -> String {
        let encoder = BeatFrameEncoder(clusterId: t.clusterId, phases: t.phases, nodeId: nodeId)
        var buffer = [UInt8](repeating: 0, count: encoder.maxFrameBytes)
        let window = Array(t.windowId(ofBeat: k).utf8)
        let n = buffer.withUnsafeMutableBytes { out in
            window.withUnsafeBytes { w in
                encoder.encode(
                    into: out, beatIndex: k, downbeat: t.isDownbeat(k), phaseIndex: t.timeline.phaseIndex(k),
                    hlc: HLCStamp(wallMs: t.instantNs(ofBeat: k) / 1_000_000, counter: hlcCounter),
                    deadlineUnixMs: t.timeline.deadlineUnixMs(ofBeat: k), tempoBpm: t.bpm(ofBeat: k),
                    windowId: w.baseAddress!, term: term, degraded: degraded)
            }
        }
        return String(decoding: buffer[..<n], as: UTF8.self)
    }

    static func eventSpec(_ event: BackbeatEvent) -> EventSpec {
        var e = EventSpec(kind: "")
        switch event {
        case .beat(let b):
            e.kind = "beat"
            e.beat = b.index
            e.term = b.frame.term
            e.publisher = b.publisher
        case .gap(let missed):
            e.kind = "gap"
            e.first = missed.lowerBound
            e.last = missed.upperBound
        case .degraded(let b):
            e.kind = "degraded"
            e.beat = b.index
        case .leaderChanged(let term, let previous, let publisher):
            e.kind = "leader_changed"
            e.term = term
            e.previous_term = previous
            e.publisher = publisher
        case .tempoChanged(let bpm, let previous, let atBeat):
            e.kind = "tempo_changed"
            e.bpm = bpm
            e.previous_bpm = previous
            e.at_beat = atBeat
        case .tempoScheduled(let change):
            e.kind = "tempo_scheduled"
            e.bpm = change.bpm
            e.at_beat = change.atBeat
        case .timelineUpdated(let t):
            e.kind = "timeline_updated"
            e.term = t.term
        case .refused(let reason):
            e.kind = "refused"
            e.reason = reason
        case .mismatch(let beat, let field):
            e.kind = "mismatch"
            e.beat = beat
            e.field = field
        case .connection(let up):
            e.kind = up ? "connection_up" : "connection_down"
        }
        return e
    }

    static func state(_ tracker: FrameTracker, _ held: BeatTimeline?) -> TrackerState {
        TrackerState(
            last_index: tracker.lastIndex, fence_term: tracker.fenceTerm, accepted: tracker.accepted,
            duplicates: tracker.duplicates, refused: tracker.refused,
            timeline_version: held.map { [$0.version.epochStartBeat, $0.version.hasPending ? 1 : 0] })
    }

    // MARK: timeline.json

    static let timelineSpecs: [(String, TimelineSpec)] = [
        (
            "120 bpm, bar 8, three phases",
            TimelineSpec(
                cluster_id: "chorus-aus-01", epoch: EpochSpec(start_beat: 0, start_ns: start, bpm: 120), bar: 8,
                phases: ["plan", "work", "review"])
        ),
        (
            "7 bpm (a period that is not a whole number of ns), later epoch start, bar 4",
            TimelineSpec(
                cluster_id: "c1", epoch: EpochSpec(start_beat: 1000, start_ns: start + 123_456_789, bpm: 7), bar: 4,
                phases: ["a", "b", "c", "d"])
        ),
        (
            "a pending change at downbeat 64 to 126 bpm",
            TimelineSpec(
                cluster_id: "chorus-aus-01", epoch: EpochSpec(start_beat: 0, start_ns: start, bpm: 120),
                pending: ChangeSpec(at_beat: 64, bpm: 126), bar: 8, phases: ["plan", "work", "review"])
        ),
        (
            "6000 bpm, bar 1",
            TimelineSpec(
                cluster_id: "fast", epoch: EpochSpec(start_beat: 5, start_ns: start + 7, bpm: 6000), bar: 1,
                phases: ["x"])
        ),
        (
            "97 bpm, bar 7, two phases, a pending change to 1 bpm at beat 700",
            TimelineSpec(
                cluster_id: "odd", epoch: EpochSpec(start_beat: 0, start_ns: start, bpm: 97),
                pending: ChangeSpec(at_beat: 700, bpm: 1), bar: 7, phases: ["one", "two"])
        ),
    ]

    static func timelineVectors() throws -> TimelineVectors {
        var cases: [TimelineCase] = []
        for (name, spec) in timelineSpecs {
            let t = try timeline(spec)
            let origin = spec.epoch.start_beat
            var beats = [origin - 1, origin, origin + 1]
            if let p = spec.pending { beats += [p.at_beat - 1, p.at_beat, p.at_beat + 1, p.at_beat + 5] }
            beats += [origin + 37, origin + 1001]
            var times: [Int64] = []
            for k in beats {
                let i = t.instantNs(ofBeat: k)
                times += [i - 1, i, i + 1, i + (t.instantNs(ofBeat: k + 1) - i) / 3]
            }
            times.append(spec.epoch.start_ns - 3 * t.timeline.periodNs - 5)  // before the epoch: extrapolated
            let quanta: [Int64] = [Int64(spec.bar), 4, 1, 3]
            let at = times.enumerated().map { timeQuery(t, $1, quantum: quanta[$0 % quanta.count]) }
            cases.append(TimelineCase(name: name, timeline: spec, at: at, beats: beats.map { beatQuery(t, $0) }))
        }
        return TimelineVectors(
            description: "timeline + instant → position and local answers; beat → instant (docs/vectors/README.md)",
            cases: cases)
    }

    // MARK: tempo.json

    static func tempoVectors() throws -> TempoVectors {
        let base = TimelineSpec(
            cluster_id: "chorus-aus-01", epoch: EpochSpec(start_beat: 0, start_ns: start, bpm: 120), bar: 8,
            phases: ["plan", "work", "review"])
        var odd = base
        odd.epoch = EpochSpec(start_beat: 16, start_ns: start + 999, bpm: 7)
        let changes: [(String, TimelineSpec, ChangeSpec)] = [
            ("120 → 126 at downbeat 64", base, ChangeSpec(at_beat: 64, bpm: 126)),
            ("120 → 60 at downbeat 8", base, ChangeSpec(at_beat: 8, bpm: 60)),
            ("120 → 6000 at downbeat 800", base, ChangeSpec(at_beat: 800, bpm: 6000)),
            ("7 → 11 at downbeat 24 (epoch from beat 16)", odd, ChangeSpec(at_beat: 24, bpm: 11)),
            ("7 → 1 at downbeat 1016", odd, ChangeSpec(at_beat: 1016, bpm: 1)),
            ("refused: not a downbeat", base, ChangeSpec(at_beat: 65, bpm: 126)),
            ("refused: at the epoch's start", odd, ChangeSpec(at_beat: 16, bpm: 126)),
            ("refused: before the epoch's start", odd, ChangeSpec(at_beat: 8, bpm: 126)),
            ("refused: bpm 0", base, ChangeSpec(at_beat: 64, bpm: 0)),
            ("refused: bpm -5", base, ChangeSpec(at_beat: 64, bpm: -5)),
            ("refused: bpm 6001 (outside the supported math)", base, ChangeSpec(at_beat: 64, bpm: 6001)),
        ]
        return TempoVectors(
            description:
                "a tempo change (at a downbeat) on a timeline: scheduled or refused, and the arithmetic across it",
            cases: try changes.map { try tempoCase($0, $1, $2) })
    }

    /// One tempo case: PulseCore's `Timeline.schedule` decides, then the
    /// client's validation of the next epoch; the arithmetic around the change.
    static func tempoCase(_ name: String, _ spec: TimelineSpec, _ change: ChangeSpec) throws -> TempoCase {
        var plain = Timeline(
            epoch: TempoEpoch(startBeat: spec.epoch.start_beat, startNs: spec.epoch.start_ns, bpm: spec.epoch.bpm),
            bar: spec.bar, phaseCount: spec.phases.count)
        var withPending = spec
        withPending.pending = change
        let result: String
        do throws(TimelineError) {
            try plain.schedule(change: TempoChange(atBeat: change.at_beat, bpm: change.bpm))
            result = (try? timeline(withPending)) == nil ? "out_of_range" : "scheduled"
        } catch {
            result = error.reason
        }
        guard result == "scheduled" else {
            return TempoCase(
                name: name, timeline: spec, change: change, result: result, at_ns: nil, instants: [], positions: [])
        }
        let t = try timeline(withPending)
        let d = change.at_beat
        let instants = [d - 9, d - 1, d, d + 1, d + 2, d + 8, d + 1000].map {
            InstantQuery(beat: $0, instant_ns: t.instantNs(ofBeat: $0), bpm: t.bpm(ofBeat: $0))
        }
        let atNs = t.instantNs(ofBeat: d)
        let positions = [atNs - 1, atNs, atNs + 1, t.instantNs(ofBeat: d + 1) - 1, t.instantNs(ofBeat: d + 1)].map {
            let p = t.timeline.position(atNs: $0)
            return PositionQuery(t_ns: $0, beat: p.beat, offset_ns: p.offsetNs, length_ns: p.lengthNs)
        }
        return TempoCase(
            name: name, timeline: spec, change: change, result: result, at_ns: atNs, instants: instants,
            positions: positions)
    }

    // MARK: frames.json

    static func frameVectors() throws -> FrameVectors {
        let t = try timeline(timelineSpecs[0].1)
        let valid = frame(t, 44)
        func swap(_ old: String, _ new: String) -> String {
            precondition(valid.contains(old), old)
            return valid.replacingOccurrences(of: old, with: new)
        }
        let deadline = "\"deadline_at\":\"" + RFC3339.string(unixMs: t.timeline.deadlineUnixMs(ofBeat: 44)) + "\""
        let window = "\"window_id\":\"\(t.windowId(ofBeat: 44))\""
        var nested = "1"
        for _ in 0..<17 { nested = "[" + nested + "]" }
        var deep15 = "1"
        for _ in 0..<15 { deep15 = "[" + deep15 + "]" }
        let inputs: [(String, String)] = [
            ("a frame as the node encodes it", valid),
            ("degraded", frame(t, 45, degraded: true)),
            ("a downbeat, term 1, counter beyond 4 hex digits", frame(t, 40, term: 1, hlcCounter: 0x1_0000)),
            (
                "unknown fields (nested) are skipped",
                swap("\"term\":3}", "\"term\":3,\"x\":{\"y\":[1,2.5e3,null,true]}}")
            ),
            ("unknown field nested 15 deep", swap("\"term\":3}", "\"term\":3,\"x\":\(deep15)}")),
            ("whitespace around tokens", " " + swap(",", " ,\n\t") + "\r\n"),
            (
                "fields in another order (type last)",
                String(swap("{\"type\":\"backbeat.beatframe.v1\",", "{").dropLast())
                    + ",\"type\":\"backbeat.beatframe.v1\"}"
            ),
            ("escapes in strings", swap("\"phase\":\"work\"", "\"phase\":\"\\u0077or\\u006b\"")),
            ("hlc suffix with a colon", swap(":ab12\"", ":a:12\"")),
            ("term at UInt64.max", swap("\"term\":3}", "\"term\":18446744073709551615}")),
            ("degraded false", swap("\"term\":3}", "\"term\":3,\"degraded\":false}")),
            ("empty", ""),
            ("only whitespace", " \n\t "),
            ("too large", valid + String(repeating: " ", count: 4097 - valid.utf8.count)),
            ("not JSON", "nope"),
            ("truncated", String(valid.dropLast())),
            ("trailing bytes", valid + "x"),
            ("two objects", valid + valid),
            ("an array", "[]"),
            ("a number", "42"),
            ("a string", "\"backbeat\""),
            ("nested 17 deep", swap("\"term\":3}", "\"term\":3,\"x\":\(nested)}")),
            ("type v2", swap("beatframe.v1", "beatframe.v2")),
            ("type not a string", swap("\"backbeat.beatframe.v1\"", "5")),
            ("no type", swap("\"type\":\"backbeat.beatframe.v1\",", "")),
            ("no term", swap(",\"term\":3", "")),
            ("beat_index twice", swap("\"beat_index\":44", "\"beat_index\":44,\"beat_index\":45")),
            ("an unknown field twice is fine", swap("\"term\":3}", "\"term\":3,\"x\":1,\"x\":2}")),
            ("empty cluster_id", swap("\"cluster_id\":\"chorus-aus-01\"", "\"cluster_id\":\"\"")),
            ("cluster_id of 129 bytes", swap("chorus-aus-01", String(repeating: "c", count: 129))),
            ("negative beat_index", swap("\"beat_index\":44", "\"beat_index\":-1")),
            ("fractional beat_index", swap("\"beat_index\":44", "\"beat_index\":44.5")),
            ("beat_index 44.0", swap("\"beat_index\":44", "\"beat_index\":44.0")),
            ("beat_index 1e3", swap("\"beat_index\":44", "\"beat_index\":1e3")),
            ("beat_index as a string", swap("\"beat_index\":44", "\"beat_index\":\"44\"")),
            ("beat_index 2^63", swap("\"beat_index\":44", "\"beat_index\":9223372036854775808")),
            ("beat_index with a leading zero", swap("\"beat_index\":44", "\"beat_index\":044")),
            ("downbeat 0", swap("\"downbeat\":false", "\"downbeat\":0")),
            ("downbeat \"true\"", swap("\"downbeat\":false", "\"downbeat\":\"true\"")),
            ("empty phase", swap("\"phase\":\"work\"", "\"phase\":\"\"")),
            ("phase null", swap("\"phase\":\"work\"", "\"phase\":null")),
            ("hlc not a stamp", swap("\"hlc\":\"", "\"hlc\":\"zz")),
            ("hlc uppercase hex", swap(":0001:", ":000A:")),
            ("hlc counter of 3 digits", swap(":0001:", ":001:")),
            ("hlc counter zero-padded beyond 4 digits", swap(":0001:", ":00001:")),
            ("hlc without suffix", swap(":ab12\"", ":\"")),
            ("deadline_at 30 February", swap(deadline, "\"deadline_at\":\"2025-02-30T00:00:00.000Z\"")),
            ("deadline_at leap second", swap(deadline, "\"deadline_at\":\"2016-12-31T23:59:60.000Z\"")),
            ("deadline_at 29 February 2024", swap(deadline, "\"deadline_at\":\"2024-02-29T23:59:59.999Z\"")),
            ("deadline_at without ms", swap(deadline, "\"deadline_at\":\"2025-09-04T12:00:21Z\"")),
            ("deadline_at with an offset", swap(deadline, "\"deadline_at\":\"2025-09-04T12:00:21.500+00:00\"")),
            ("tempo_bpm 0", swap("\"tempo_bpm\":120", "\"tempo_bpm\":0")),
            ("tempo_bpm 6001", swap("\"tempo_bpm\":120", "\"tempo_bpm\":6001")),
            ("tempo_bpm 120.0", swap("\"tempo_bpm\":120", "\"tempo_bpm\":120.0")),
            (
                "window_id uppercase",
                swap(window, window.uppercased().replacingOccurrences(of: "WINDOW_ID", with: "window_id"))
            ),
            ("window_id of 31 digits", swap(window, String(window.dropLast(2)) + "\"")),
            ("term -1", swap("\"term\":3}", "\"term\":-1}")),
            ("term 2^64", swap("\"term\":3}", "\"term\":18446744073709551616}")),
            ("degraded \"yes\"", swap("\"term\":3}", "\"term\":3,\"degraded\":\"yes\"}")),
            ("degraded null", swap("\"term\":3}", "\"term\":3,\"degraded\":null}")),
            (
                "a bad field before a missing one: the first fault in the text",
                swap("\"beat_index\":44", "\"beat_index\":-1").replacingOccurrences(of: ",\"term\":3", with: "")
            ),
            ("a duplicate after a bad field", swap("\"tempo_bpm\":120", "\"tempo_bpm\":0,\"tempo_bpm\":120")),
            ("a raw control character in a string", swap("\"phase\":\"work\"", "\"phase\":\"wo\u{01}rk\"")),
            ("a lone surrogate escape", swap("\"phase\":\"work\"", "\"phase\":\"\\ud800\"")),
            ("a surrogate pair escape", swap("\"phase\":\"work\"", "\"phase\":\"\\ud83c\\udfb5\"")),
            ("an unknown escape", swap("\"phase\":\"work\"", "\"phase\":\"\\q\"")),
            (
                "a string of 257 bytes in an unknown field",
                swap("\"term\":3}", "\"term\":3,\"x\":\"\(String(repeating: "y", count: 257))\"}")
            ),
            (
                "a string of 256 bytes in an unknown field",
                swap("\"term\":3}", "\"term\":3,\"x\":\"\(String(repeating: "y", count: 256))\"}")
            ),
            ("a bare word", swap("\"term\":3}", "\"term\":3,\"x\":nul}")),
        ]
        var cases: [FrameCase] = inputs.map { name, text in
            FrameCase(name: name, frame: text, frame_hex: nil, result: "", decoded: nil)
        }
        // Bytes that are not UTF-8: a phase holding 0xff.
        var bad = Array(valid.utf8)
        let at = Array(valid.utf8).firstRange(of: Array("\"work\"".utf8))!.lowerBound + 1
        bad[at] = 0xff
        cases.append(
            FrameCase(
                name: "invalid UTF-8 in a string", frame: nil,
                frame_hex: bad.map { String(format: "%02x", $0) }.joined(), result: "", decoded: nil))
        return FrameVectors(
            description: "bytes on the beat subject → accepted (with every field) or refused with the decoder's reason",
            cases: cases.map(judge))
    }

    /// `c` with its result (and decoded fields) from PulseCore's BeatFrameDecoder.
    static func judge(_ c: FrameCase) -> FrameCase {
        var c = c
        c.decoded = nil
        switch BeatFrameDecoder.result(c.bytes) {
        case .failure(let error):
            c.result = error.reason
        case .success(let f):
            c.result = "accepted"
            c.decoded = DecodedSpec(
                cluster_id: f.clusterId, beat_index: f.beatIndex, downbeat: f.downbeat, phase: f.phase,
                hlc_ms: f.hlc.wallMs, hlc_counter: f.hlc.counter, publisher: f.hlcSuffix, deadline_ms: f.deadlineUnixMs,
                tempo_bpm: f.tempoBpm, window_id: f.windowId, term: f.term, degraded: f.degraded)
        }
        return c
    }

    // MARK: sequences.json

    /// A timeline message as a node answers it.
    static func message(_ spec: TimelineSpec, term: UInt64, nowNs: Int64 = start) throws -> String {
        let t = try timeline(spec)
        let pending = t.timeline.pendingEpoch.map {
            "{\"at_beat\":\($0.startBeat),\"at_ns\":\($0.startNs),\"at\":\"\(RFC3339.string(unixMs: $0.startNs / 1_000_000))\",\"bpm\":\($0.bpm)}"
        }
        let phases = spec.phases.map { "\"\($0)\"" }.joined(separator: ",")
        return "{\"type\":\"backbeat.timeline.v1\",\"cluster_id\":\"\(spec.cluster_id)\",\"epoch\":{\"start_beat\":"
            + "\(spec.epoch.start_beat),\"start_ns\":\(spec.epoch.start_ns),\"start_at\":\"\(RFC3339.string(unixMs: spec.epoch.start_ns / 1_000_000))\","
            + "\"bpm\":\(spec.epoch.bpm)},\"bar\":\(spec.bar),\"phases\":[\(phases)],\"pending\":\(pending ?? "null"),"
            + "\"term\":\(term),\"leader\":\"n1\",\"node_id\":\"n2\",\"degraded\":false,\"now_ns\":\(nowNs)}"
    }

    enum Input {
        case timeline(String)
        case frame(String, receivedNs: Int64)
    }

    static func sequenceVectors() throws -> SequenceVectors {
        let spec = timelineSpecs[0].1
        let c = spec.cluster_id
        let t = try timeline(spec)
        let m3 = try message(spec, term: 3)
        let m4 = try message(spec, term: 4)
        var pendingSpec = spec
        pendingSpec.pending = ChangeSpec(at_beat: 16, bpm: 126)
        let tp = try timeline(pendingSpec)
        let mp = try message(pendingSpec, term: 3)
        var appliedSpec = spec
        appliedSpec.epoch = EpochSpec(start_beat: 16, start_ns: tp.instantNs(ofBeat: 16), bpm: 126)
        let mApplied = try message(appliedSpec, term: 3)
        func f(
            _ k: Int64, term: UInt64 = 3, degraded: Bool = false, on tl: BeatTimeline? = nil, late: Int64 = 1_000_000
        )
            -> Input
        {
            let on = tl ?? t
            return .frame(frame(on, k, term: term, degraded: degraded), receivedNs: on.instantNs(ofBeat: k) + late)
        }
        func raw(_ text: String, at k: Int64) -> Input { .frame(text, receivedNs: t.instantNs(ofBeat: k) + 1_000_000) }
        let f12 = frame(t, 12)
        let scenarios: [(String, [Input])] = [
            ("steady frames", [.timeline(m3), f(10), f(11), f(12)]),
            ("a redelivered frame is dropped", [.timeline(m3), f(10), f(10), f(11), f(11, late: 50_000_000)]),
            ("a gap after an outage", [.timeline(m3), f(10), f(14)]),
            (
                "failover: a gap, one leader change; once the new term is confirmed, the deposed leader's late frame is fenced",
                [
                    .timeline(m3), f(10), f(11), f(14, term: 4), .timeline(m4), f(15, term: 3), f(15, term: 4),
                    f(16, term: 4),
                ]
            ),
            (
                "a newer term on the timeline fences the old leader's frames",
                [.timeline(m3), f(10), .timeline(m4), f(11, term: 3), f(11, term: 4)]
            ),
            (
                "a degraded node's frames",
                [.timeline(m3), f(10), f(11, degraded: true), f(12, term: 4, degraded: true)]
            ),
            (
                "a tempo change scheduled, applied at its downbeat, then the applied timeline",
                [
                    .timeline(m3), f(14), .timeline(mp), f(15, on: tp), f(16, on: tp), f(17, on: tp),
                    .timeline(mApplied), .timeline(mp), .timeline(m3),
                ]
            ),
            (
                "a lagging node's older timeline does not roll a change back",
                [.timeline(mp), .timeline(m3), f(16, on: tp)]
            ),
            (
                "frames before any timeline: judged by their own deadline",
                [
                    f(10), .frame(frame(t, 11), receivedNs: t.instantNs(ofBeat: 11) + 61_000_000_000),
                    .frame(frame(t, 12), receivedNs: t.instantNs(ofBeat: 12) - 61_000_000_000), .timeline(m3), f(13),
                ]
            ),
            (
                "forged and hostile frames",
                [
                    .timeline(m3), f(10),
                    raw(f12.replacingOccurrences(of: "\"chorus-aus-01\"", with: "\"other\""), at: 12),
                    raw(f12.replacingOccurrences(of: "\"term\":3", with: "\"term\":200"), at: 12),
                    raw(f12.replacingOccurrences(of: "\"term\":3", with: "\"term\":18446744073709551615"), at: 12),
                    raw(
                        f12.replacingOccurrences(of: "\"beat_index\":12", with: "\"beat_index\":9223372036854775807"),
                        at: 12),
                    raw(f12.replacingOccurrences(of: "\"beat_index\":12", with: "\"beat_index\":14"), at: 12),
                    raw(frame(t, 3), at: 12),
                    raw(f12.replacingOccurrences(of: "\"phase\":\"work\"", with: "\"phase\":\"lunch\""), at: 12),
                    raw("{\"type\":\"backbeat.beatframe.v1\"}", at: 13), raw("", at: 13), raw("[1]", at: 13),
                    f(13),
                ]
            ),
            (
                "a forged frame with a term within the lead is believed like an echo but does not move the fence",
                [.timeline(m3), f(10), f(11, term: 9), f(12, term: 3), f(13, term: 3)]
            ),
            (
                "stale refusals that repeat: the next confirmed timeline sets the fence (a cluster restored with lower terms)",
                [.timeline(m4), f(10, term: 3), f(11, term: 3), .timeline(m3), f(12, term: 3)]
            ),
            (
                "hostile timeline messages are refused and change nothing",
                [
                    .timeline(m3), .timeline(m3.replacingOccurrences(of: "\"bar\":8", with: "\"bar\":0")),
                    .timeline(m3.replacingOccurrences(of: "\"chorus-aus-01\"", with: "\"other\"")),
                    .timeline("{\"error\":\"no committed timeline yet\",\"code\":\"no_timeline\"}"), .timeline("{"),
                    f(10),
                ]
            ),
        ]
        return SequenceVectors(
            description:
                "timeline messages and frames in arrival order → the events a consumer raises and its state after each",
            cases: scenarios.map { SequenceCase(name: $0, cluster_id: c, steps: run(clusterId: c, $1)) })
    }

    /// Feeds `inputs` to a fresh FrameTracker as the client does (timeline
    /// messages decoded and adopted, frames judged with the timeline held).
    static func run(clusterId c: String, _ inputs: [Input]) -> [Step] {
        var tracker = FrameTracker(clusterId: c)
        var held: BeatTimeline?
        var steps: [Step] = []
        for input in inputs {
            switch input {
            case .timeline(let text):
                var events: [BackbeatEvent]
                do {
                    let decoded = try BeatTimeline.decode(Data(text.utf8), clusterId: c)
                    let outcome = tracker.adopt(decoded, over: held)
                    held = outcome.held
                    events = outcome.events
                } catch {
                    events = [.refused(reason: "timeline_" + error.reason)]
                }
                steps.append(
                    Step(
                        timeline: text, frame: nil, received_ns: nil, events: events.map(eventSpec),
                        state: state(tracker, held)))
            case .frame(let text, let receivedNs):
                let events = Array(text.utf8).withUnsafeBytes {
                    tracker.receive($0, receivedNs: receivedNs, timeline: held)
                }
                steps.append(
                    Step(
                        timeline: nil, frame: text, received_ns: receivedNs, events: events.map(eventSpec),
                        state: state(tracker, held)))
            }
        }
        return steps
    }
}
