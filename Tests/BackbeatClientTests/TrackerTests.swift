// Pure tests of the consumer's timeline and frame tracker: local answers
// against an independent oracle written from the contract (§1), hostile
// timeline messages, and the frame rules (dedupe, fence, gaps, refusals).
import BackbeatClient
import Crypto
import Foundation
import PulseCore
import XCTest

final class TrackerTests: XCTestCase {
    static let startNs: Int64 = 1_757_000_000_000_000_000

    func message(pending: String = "null", term: Int = 3, bar: Int = 8, bpm: Int = 120) -> Data {
        Data(
            """
            {"type":"backbeat.timeline.v1","cluster_id":"c1","epoch":{"start_beat":0,"start_ns":\(Self.startNs),
            "start_at":"x","bpm":\(bpm)},"bar":\(bar),"phases":["plan","work","review"],"pending":\(pending),
            "term":\(term),"leader":"n1","node_id":"n2","degraded":false,"now_ns":\(Self.startNs)}
            """.utf8)
    }

    /// The contract's formulas, independently (no PulseCore).
    func oracleWindow(_ k: Int64, bar: Int64 = 8) -> String {
        let digest = SHA256.hash(data: Data("c1:\(k - k % bar)".utf8))
        return String(digest.map { String(format: "%02x", $0) }.joined().prefix(32))
    }

    func testLocalAnswersMatchTheContract() throws {
        let t = try BeatTimeline.decode(message(), clusterId: "c1")
        let phases = ["plan", "work", "review"]
        for k in Int64(0)..<40 {
            let instant = Self.startNs + k * 500_000_000
            XCTAssertEqual(t.instantNs(ofBeat: k), instant)
            XCTAssertEqual(t.beat(at: instant), k)
            XCTAssertEqual(t.beat(at: instant + 499_999_999), k)
            XCTAssertEqual(t.phase(at: instant + 1), phases[Int(k % 8) * 3 / 8])
            XCTAssertEqual(t.windowId(at: instant), oracleWindow(k))
            XCTAssertEqual(t.isDownbeat(at: instant), k % 8 == 0)
            XCTAssertEqual(t.nextBeat(after: instant).index, k + 1)
            XCTAssertEqual(t.nextDownbeat(after: instant).index, (k / 8 + 1) * 8)
        }
        XCTAssertEqual(t.nextPhaseStart("review", after: Self.startNs)?.index, 6)
        XCTAssertEqual(t.nextPhaseStart("plan", after: Self.startNs)?.index, 8)
        XCTAssertNil(t.nextPhaseStart("lunch", after: Self.startNs))
    }

    func testPendingChangeMovesLaterInstantsOnly() throws {
        let atNs = Self.startNs + 16 * 500_000_000
        let t = try BeatTimeline.decode(
            message(pending: #"{"at_beat":16,"at_ns":\#(atNs),"at":"x","bpm":126}"#), clusterId: "c1")
        XCTAssertEqual(t.instantNs(ofBeat: 16), atNs)
        XCTAssertEqual(t.instantNs(ofBeat: 17), atNs + 60_000_000_000 / 126)
        XCTAssertEqual(t.bpm(ofBeat: 15), 120)
        XCTAssertEqual(t.bpm(ofBeat: 16), 126)
        let plain = try BeatTimeline.decode(message(), clusterId: "c1")
        XCTAssertGreaterThan(t.version, plain.version, "a committed change is newer than the state before it")
    }

    func testHostileTimelinesAreRefusedWithAReason() {
        let cases: [(Data, String)] = [
            (Data("{".utf8), "malformed"),
            (message(bar: 0), "out_of_range"),
            (message(bar: 2), "out_of_range"),  // 3 phases in a bar of 2
            (message(bpm: 0), "out_of_range"),
            (message(bpm: 1_000_000), "out_of_range"),
            (message(pending: #"{"at_beat":17,"at_ns":1,"at":"x","bpm":126}"#), "out_of_range"),  // not a downbeat
            (message(pending: #"{"at_beat":9223372036854775800,"at_ns":1,"at":"x","bpm":126}"#), "out_of_range"),
            (message(pending: #"{"at_beat":16,"at_ns":1,"at":"x","bpm":126}"#), "out_of_range"),  // wrong instant
            (Data(#"{"error":"no committed timeline yet","code":"no_timeline"}"#.utf8), "no_timeline"),
        ]
        for (data, reason) in cases {
            XCTAssertThrowsError(try BeatTimeline.decode(data, clusterId: "c1")) { error in
                XCTAssertEqual((error as? TimelineDecodeError)?.reason, reason, String(decoding: data, as: UTF8.self))
            }
        }
        XCTAssertThrowsError(try BeatTimeline.decode(message(), clusterId: "other"))
    }

    func frame(_ k: Int64, term: Int = 3, degraded: Bool = false, bpm: Int = 120, phase: String? = nil) -> [UInt8] {
        let t = try! BeatTimeline.decode(message(), clusterId: "c1")
        let deadline = RFC3339.string(unixMs: t.instantNs(ofBeat: k + 1) / 1_000_000)
        return Array(
            (#"{"type":"backbeat.beatframe.v1","cluster_id":"c1","beat_index":\#(k),"downbeat":\#(k % 8 == 0),"#
                + #""phase":"\#(phase ?? t.phase(ofBeat: k))","hlc":"18f0a:0001:ab12","deadline_at":"\#(deadline)","#
                + #""tempo_bpm":\#(bpm),"window_id":"\#(t.windowId(ofBeat: k))","term":\#(term)"#
                + (degraded ? #","degraded":true}"# : "}")).utf8)
    }

    func feed(_ tracker: inout FrameTracker, _ bytes: [UInt8], _ t: BeatTimeline?) -> [BackbeatEvent] {
        let k = (try? BeatFrameDecoder.decode(bytes))?.beatIndex ?? 0
        let at = (t ?? (try! BeatTimeline.decode(message(), clusterId: "c1"))).instantNs(ofBeat: k) + 1_000_000
        return bytes.withUnsafeBytes { tracker.receive($0, receivedNs: at, timeline: t) }
    }

    func testTrackerDropsDuplicatesReportsGapsAndFencesOnTerm() throws {
        let t = try BeatTimeline.decode(message(term: 3), clusterId: "c1")
        var tracker = FrameTracker(clusterId: "c1")
        tracker.noteTimeline(t)
        XCTAssertEqual(feed(&tracker, frame(10), t).count, 1)
        XCTAssertTrue(feed(&tracker, frame(10), t).isEmpty, "a duplicate is dropped silently")
        XCTAssertEqual(tracker.duplicates, 1)
        let afterGap = feed(&tracker, frame(13, term: 4), t)
        guard case .gap(let missed) = afterGap.first else { return XCTFail("\(afterGap)") }
        XCTAssertEqual(missed, 11...12)
        XCTAssertTrue(
            afterGap.contains { if case .leaderChanged(4, 3, "ab12") = $0 { return true } else { return false } })
        XCTAssertEqual(tracker.fenceTerm, 3, "a frame's own term does not raise the fence")
        XCTAssertTrue(tracker.needsConfirmation)
        tracker.noteTimeline(try BeatTimeline.decode(message(term: 4), clusterId: "c1"))
        let stale = feed(&tracker, frame(14, term: 3), t)
        guard case .refused("stale_term") = stale.first else { return XCTFail("\(stale)") }
        let degraded = feed(&tracker, frame(14, term: 4, degraded: true), t)
        XCTAssertTrue(degraded.contains { if case .degraded = $0 { return true } else { return false } })
        let wrong = feed(&tracker, frame(15, term: 4, phase: "lunch"), t)
        XCTAssertTrue(wrong.contains { if case .mismatch(15, "phase") = $0 { return true } else { return false } })
        XCTAssertFalse(wrong.contains { if case .beat = $0 { return true } else { return false } }, "not a beat")
        let ahead = feed(&tracker, frame(16, term: 4 + 100), t)
        guard case .refused("term_ahead") = ahead.first else { return XCTFail("\(ahead)") }
    }

    func testFramesThatDoNotDecodeAreRefusedWithTheDecodersReason() throws {
        var tracker = FrameTracker(clusterId: "c1")
        let t = try BeatTimeline.decode(message(), clusterId: "c1")
        let cases: [(String, String)] = [
            ("", "empty"), ("[]", "not_an_object"), ("{\"type\":\"x\"}", "wrong_type"),
            (
                String(decoding: frame(3), as: UTF8.self).replacingOccurrences(
                    of: "\"beat_index\":3", with: "\"beat_index\":-3"),
                "bad_beat_index"
            ),
        ]
        for (text, reason) in cases {
            let events = Array(text.utf8).withUnsafeBytes { tracker.receive($0, receivedNs: Self.startNs, timeline: t) }
            guard case .refused(let got) = events.first else { return XCTFail(text) }
            XCTAssertEqual(got, reason, text)
        }
        let other = Array(
            String(decoding: frame(3), as: UTF8.self).replacingOccurrences(of: "\"c1\"", with: "\"c2\"").utf8)
        let events = other.withUnsafeBytes { tracker.receive($0, receivedNs: Self.startNs, timeline: t) }
        guard case .refused("wrong_cluster") = events.first else { return XCTFail("\(events)") }
        XCTAssertEqual(tracker.refused, 5)
        let huge = Array(
            String(decoding: frame(3), as: UTF8.self)
                .replacingOccurrences(of: "\"beat_index\":3", with: "\"beat_index\":9223372036854775807").utf8)
        let farEvents = huge.withUnsafeBytes { tracker.receive($0, receivedNs: Self.startNs, timeline: t) }
        guard case .refused("index_ahead") = farEvents.first else { return XCTFail("\(farEvents)") }
    }
}
