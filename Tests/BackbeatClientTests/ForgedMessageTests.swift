// Issue 20, item 2, against a real `pulse` and a real, unauthenticated
// nats-server (as `make cluster` runs it): the exact attacks on a consumer —
// a timeline publication with term 2^63−1, one with a forged `pending`
// change, a copy of a real frame with term + 8 and the next frame predicted
// with term + 8 — leave the client's beat, phase and downbeats right, its
// timeline the committed one, and its beats flowing, each within one period
// of its instant.
import BackbeatClient
import CNats
import Foundation
import Glibc
import PulseCore
import XCTest

final class ForgedMessageTests: XCTestCase {
    private static let cluster = "forged"
    private static let periodNs: Int64 = 100_000_000  // 600 bpm

    /// What the attacker thread did, for the assertions.
    final class Attack: @unchecked Sendable {
        private let lock = NSLock()
        private var _doneNs: Int64?
        private var _copiedIndex: Int64 = -1
        var doneNs: Int64? {
            lock.lock()
            defer { lock.unlock() }
            return _doneNs
        }
        var copiedIndex: Int64 {
            lock.lock()
            defer { lock.unlock() }
            return _copiedIndex
        }
        func finish(copied: Int64) {
            lock.lock()
            _doneNs = BackbeatClient.localNs()
            _copiedIndex = copied
            lock.unlock()
        }
    }

    /// The attacker's NATS handles, used by its thread only once handed over.
    struct Handles: @unchecked Sendable {
        let connection: OpaquePointer?
        let subscription: OpaquePointer?
    }

    /// `body` (a JSON object) with `changes` applied.
    private static func edited(_ body: Data, _ changes: [String: Any]) -> String {
        var object = (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:]
        for (key, value) in changes { object[key] = value }
        let data = (try? JSONSerialization.data(withJSONObject: object)) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    /// Beat `k` of `timeline` as the pulse would publish it, with `term` and `hlc`.
    private static func predicted(_ k: Int64, _ t: BeatTimeline, term: UInt64, hlc: String) -> String {
        let deadline = RFC3339.string(unixMs: t.instantNs(ofBeat: k + 1) / 1_000_000)
        return #"{"type":"backbeat.beatframe.v1","cluster_id":"\#(cluster)","beat_index":\#(k),"#
            + #""downbeat":\#(t.isDownbeat(k)),"phase":"\#(t.phase(ofBeat: k))","hlc":"\#(hlc)","#
            + #""deadline_at":"\#(deadline)","tempo_bpm":\#(t.bpm(ofBeat: k)),"window_id":"\#(t.windowId(ofBeat: k))","#
            + #""term":\#(term)}"#
    }

    func testOneForgedMessageCannotMoveTheConsumer() async throws {
        let nats = try NatsServerProcess()
        let dir = Proc.tempDir("forged")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let admin = Proc.freePort()
        let node = try PulseNodeProcess(
            arguments: [
                "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", Self.cluster, "-nats", nats.url,
                "-data-dir", dir + "/node", "-admin-port", "\(admin)",
            ], logPath: dir + "/node.log")
        defer { node.stop() }
        var body = Data()
        XCTAssertTrue(
            Proc.waitUntil(seconds: 10) {
                guard let answer = Proc.http("GET", port: admin, path: "/timeline"), answer.status == 200 else {
                    return false
                }
                body = answer.body
                return true
            }, node.log)
        let real = try BeatTimeline.decode(body, clusterId: Self.cluster)
        let client = try await BackbeatClient.connect(BackbeatClientOptions(url: nats.url, clusterId: Self.cluster))
        defer { client.close() }
        XCTAssertEqual(client.timeline?.timeline, real.timeline)

        // The attacker: an ordinary NATS connection, as any consumer has.
        var nc: OpaquePointer?
        XCTAssertEqual(natsConnection_ConnectTo(&nc, nats.url), NATS_OK)
        defer { natsConnection_Destroy(nc) }
        var sub: OpaquePointer?
        XCTAssertEqual(natsConnection_SubscribeSync(&sub, nc, "backbeat.\(Self.cluster).beat"), NATS_OK)
        defer { natsSubscription_Destroy(sub) }
        let attack = Attack()
        let handles = Handles(connection: nc, subscription: sub)
        let timelineBody = body
        Thread.detachNewThread {
            let (connection, subscription) = (handles.connection, handles.subscription)
            usleep(500_000)
            // Drain what queued up, then wait for the next real frame k.
            var msg: OpaquePointer?
            while natsSubscription_NextMsg(&msg, subscription, 1) == NATS_OK { natsMsg_Destroy(msg) }
            guard natsSubscription_NextMsg(&msg, subscription, 2000) == NATS_OK, let msg else { return }
            let copy = Data(bytes: natsMsg_GetData(msg), count: Int(natsMsg_GetDataLength(msg)))
            natsMsg_Destroy(msg)
            guard let frame = try? BeatFrameDecoder.decode([UInt8](copy)) else { return }
            let text = String(decoding: copy, as: UTF8.self)
            let beat = "backbeat.\(Self.cluster).beat"
            let timeline = "backbeat.\(Self.cluster).timeline"
            // 1. The real frame k again, term + 8; 2. frame k + 1 before its time, term + 8.
            natsConnection_PublishString(
                connection, beat,
                text.replacingOccurrences(of: "\"term\":\(frame.term)", with: "\"term\":\(frame.term + 8)"))
            natsConnection_PublishString(
                connection, beat,
                Self.predicted(
                    frame.beatIndex + 1, real, term: frame.term + 8, hlc: frame.hlc.text(suffix: frame.hlcSuffix)))
            // 3. A timeline publication with term 2^63 − 1.
            natsConnection_PublishString(
                connection, timeline, Self.edited(timelineBody, ["term": NSNumber(value: UInt64(Int64.max))]))
            // 4. The real timeline with a forged pending change (300 bpm from a downbeat two bars on).
            let at = real.nextDownbeat(after: real.instantNs(ofBeat: frame.beatIndex + 16)).index
            let pending: [String: Any] = [
                "at_beat": NSNumber(value: at), "at_ns": NSNumber(value: real.instantNs(ofBeat: at)),
                "at": "2026-01-01T00:00:00.000Z", "bpm": 300,
            ]
            natsConnection_PublishString(connection, timeline, Self.edited(timelineBody, ["pending": pending]))
            natsConnection_Flush(connection)
            attack.finish(copied: frame.beatIndex)
        }
        let watchdog = Task {
            try? await Task.sleep(nanoseconds: 15_000_000_000)
            client.close()
        }
        defer { watchdog.cancel() }

        var beats: [Beat] = []
        var gaps: [ClosedRange<Int64>] = []
        var refusals: [String] = []
        for await event in client.events {
            switch event {
            case .beat(let beat): beats.append(beat)
            case .gap(let missed): gaps.append(missed)
            case .refused(let reason): refusals.append(reason)
            case .mismatch(let k, let field): refusals.append("mismatch \(k) \(field)")
            default: break
            }
            if let done = attack.doneNs, let last = beats.last, last.instantNs > done + 30 * Self.periodNs { break }
        }
        let copied = attack.copiedIndex
        XCTAssertGreaterThanOrEqual(copied, 0, "the attack ran\n\(node.log)")
        let after = beats.filter { $0.index > copied }
        XCTAssertGreaterThanOrEqual(after.count, 30, "beats kept flowing after the attack (refused: \(refusals))")
        XCTAssertEqual(after.map(\.index), Array((copied + 1)...(copied + Int64(after.count))), "no beat missing")
        XCTAssertTrue(gaps.isEmpty, "\(gaps)")
        XCTAssertFalse(refusals.contains("stale_term"), "the real frames were never fenced out: \(refusals)")
        XCTAssertTrue(
            after.contains { $0.index == copied + 1 && $0.frame.term == real.term + 8 },
            "the predicted copy reached the client (and was believed like an echo): \(refusals)")
        for beat in after {
            XCTAssertEqual(beat.phase, real.phase(ofBeat: beat.index), "phase of \(beat.index)")
            XCTAssertEqual(beat.frame.downbeat, real.isDownbeat(beat.index), "downbeat of \(beat.index)")
            XCTAssertLessThan(beat.deliveryOffsetNs, Self.periodNs, "beat \(beat.index) within one period")
        }
        let held = try XCTUnwrap(client.timeline)
        XCTAssertEqual(held.term, real.term, "the fence is the cluster's term")
        XCTAssertEqual(held.timeline, real.timeline, "no forged pending change was adopted")
        XCTAssertNil(held.pending)
        let now = client.now()
        for k in 0..<16 {
            let at = now + Int64(k) * Self.periodNs
            XCTAssertEqual(try client.beat(at: at).index, real.beat(at: at))
            XCTAssertEqual(try client.nextDownbeat(after: at).index, real.nextDownbeat(after: at).index)
        }
    }
}
