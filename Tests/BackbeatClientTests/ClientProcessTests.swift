// BackbeatClient against real `pulse` processes and a real nats-server:
// a consumer started mid-bar answers every later beat before its frame
// arrives, across a tempo change and a leader failover (whose gap and new
// term it reports); a late joiner knows the beat within one round trip;
// hostile frames are refused with a reason.
import BackbeatClient
import CNats
import Foundation
import Glibc
import PulseCore
import XCTest

final class ClientProcessTests: XCTestCase {
    /// Records, every 10 ms, the client's first answer for the next beat
    /// (made before that beat's frame can exist), until stopped.
    final class Predictor: @unchecked Sendable {
        struct Answer {
            var index: Int64
            var phase: String
            var windowId: String
            var downbeat: Bool
            var instantNs: Int64
        }
        private let lock = NSLock()
        private var answers: [Int64: Answer] = [:]
        private var running = true

        init(_ client: BackbeatClient) {
            Thread.detachNewThread { [self] in
                while isRunning {
                    if let t = client.timeline {
                        let instant = t.nextBeat(after: client.now()).instantNs
                        let answer = Answer(
                            index: t.beat(at: instant), phase: t.phase(at: instant), windowId: t.windowId(at: instant),
                            downbeat: t.isDownbeat(at: instant), instantNs: instant)
                        lock.lock()
                        if answers[answer.index] == nil { answers[answer.index] = answer }
                        lock.unlock()
                    }
                    usleep(10_000)
                }
            }
        }

        private var isRunning: Bool {
            lock.lock()
            defer { lock.unlock() }
            return running
        }

        func stop() {
            lock.lock()
            running = false
            lock.unlock()
        }

        func answer(for k: Int64) -> Answer? {
            lock.lock()
            defer { lock.unlock() }
            return answers[k]
        }
    }

    func testConsumerStartedMidBarAnswersEveryBeatAcrossATempoChangeAndAFailover() async throws {
        let cluster = try PulseCluster(cluster: "consumer", bpm: 500, maxBpm: 600)
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        // Start mid-bar: the committed timeline says where the bar is.
        var body = Data()
        XCTAssertTrue(
            Proc.waitUntil(seconds: 10) {
                guard let answer = Proc.http("GET", port: cluster.adminPorts[leader], path: "/timeline"),
                    answer.status == 200, let t = try? BeatTimeline.decode(answer.body, clusterId: "consumer")
                else { return false }
                body = answer.body
                let inBar = t.beat(at: BackbeatClient.localNs()) % 8
                return inBar >= 2 && inBar <= 5
            }, cluster.logs + String(decoding: body, as: UTF8.self))

        let client = try await BackbeatClient.connect(
            BackbeatClientOptions(url: cluster.nats.url, clusterId: "consumer"))
        defer { client.close() }
        let joined = try XCTUnwrap(client.timeline, "the timeline is known when connect returns")
        let joinedBeat = joined.beat(at: client.now())
        XCTAssertNotEqual(joinedBeat % 8, 0, "started mid-bar")
        let initialTerm = joined.term
        let predictor = Predictor(client)
        defer { predictor.stop() }
        let watchdog = Task {
            try? await Task.sleep(nanoseconds: 50_000_000_000)
            client.close()
        }
        defer { watchdog.cancel() }

        var matched = 0
        var frames = 0
        var failures: [String] = []
        var gaps: [ClosedRange<Int64>] = []
        var newTerms: [UInt64] = []
        var scheduled: TempoChange?
        var applied: (bpm: Int64, atBeat: Int64)?
        var applyAtBeat: Int64?
        var killed = false
        var refusals: [String] = []
        for await event in client.events {
            switch event {
            case .beat(let beat):
                frames += 1
                guard let answer = predictor.answer(for: beat.index) else {
                    if beat.index > joinedBeat + 1 { failures.append("no answer for beat \(beat.index)") }
                    continue
                }
                let frameInstant = try XCTUnwrap(beat.frame.scheduledNs)
                if answer.phase != beat.phase || answer.windowId != beat.windowId
                    || answer.downbeat != beat.frame.downbeat || abs(answer.instantNs - frameInstant) >= 1_000_000
                {
                    failures.append("beat \(beat.index): answered \(answer), frame \(beat.frame)")
                } else {
                    matched += 1
                }
            case .gap(let missed): gaps.append(missed)
            case .leaderChanged(let term, _, _): newTerms.append(term)
            case .tempoScheduled(let change): scheduled = scheduled ?? change
            case .tempoChanged(let bpm, _, let atBeat): applied = (bpm, atBeat)
            case .refused(let reason): refusals.append(reason)
            case .mismatch(let k, let field): failures.append("mismatch at \(k): \(field)")
            default: break
            }
            // The script: a tempo change after 15 frames, a SIGKILL of the
            // leader 10 frames after it applied, then 100 answered beats.
            if frames == 15 && applyAtBeat == nil {
                let answer = Proc.http(
                    "POST", port: cluster.adminPorts[leader], path: "/tempo",
                    body: #"{"tempo_bpm": 480, "justification": "client test"}"#)
                XCTAssertEqual(answer?.status, 202, cluster.logs)
                applyAtBeat = (Proc.json(answer?.body ?? Data())["apply_at_beat"] as? NSNumber)?.int64Value
                XCTAssertNotNil(applyAtBeat)
            }
            if !killed, let applied, case .beat(let beat) = event, beat.index >= applied.atBeat + 10 {
                cluster.nodes[leader]?.kill(SIGKILL)
                killed = true
            }
            if matched >= 100 && killed && !newTerms.isEmpty { break }
        }
        predictor.stop()
        print(
            "consumer: \(matched) beats answered, \(frames) frames, gaps \(gaps), new terms \(newTerms),"
                + " scheduled \(String(describing: scheduled)), applied \(String(describing: applied)),"
                + " delivery offset \(client.deliveryOffsetNs ?? -1) ns, clock offset \(client.clockOffsetNs) ns")
        XCTAssertTrue(failures.isEmpty, failures.prefix(5).joined(separator: "\n") + cluster.logs)
        XCTAssertGreaterThanOrEqual(matched, 100, "answered beats that arrived (\(frames) frames)\n\(cluster.logs)")
        XCTAssertEqual(scheduled?.bpm, 480, "the committed change is an event before it applies")
        XCTAssertEqual(scheduled?.atBeat, applyAtBeat)
        XCTAssertEqual(applied?.bpm, 480)
        XCTAssertEqual(applied?.atBeat, applyAtBeat, "the tempo change took effect where the timeline said")
        XCTAssertTrue(killed, "the leader was killed")
        XCTAssertFalse(gaps.isEmpty, "the failover's gap is an event")
        XCTAssertTrue(newTerms.contains { $0 > initialTerm }, "the new term is an event (\(newTerms))")
        XCTAssertTrue(refusals.isEmpty, "\(refusals)")
        let final = try XCTUnwrap(client.timeline)
        XCTAssertGreaterThan(final.term, initialTerm, "the new leader's timeline was adopted")
        XCTAssertNotEqual(final.leader, "n\(leader + 1)")
        XCTAssertNotNil(client.deliveryOffsetNs)
        XCTAssertLessThan(abs(client.deliveryOffsetNs ?? .max), 50_000_000, "frames arrive near their instants")
    }

    func testLateJoinerKnowsTheBeatWithinOneRoundTripAndRefusesBadFrames() async throws {
        let nats = try NatsServerProcess()
        let dir = Proc.tempDir("late")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (node, admin) = try PulseNodeProcess.single(cluster: "late", bpm: 30, maxBpm: 60, nats: nats.url, dir: dir)
        defer { node.stop() }
        XCTAssertTrue(
            Proc.waitUntil(seconds: 10) { Proc.http("GET", port: admin, path: "/timeline")?.status == 200 }, node.log)
        let client = try await BackbeatClient.connect(BackbeatClientOptions(url: nats.url, clusterId: "late"))
        defer { client.close() }
        // One more round trip, measured: the answer comes well within a beat (2 s).
        let sent = Date()
        let timeline = try client.fetchTimeline()
        XCTAssertLessThan(Date().timeIntervalSince(sent), 0.2)
        let known = try client.beat()
        let next = try client.nextBeat()
        XCTAssertEqual(next.index, known.index + 1)
        XCTAssertEqual(known.phase, timeline.phase(ofBeat: known.index))
        XCTAssertEqual(timeline.leader, timeline.nodeId, "a single node leads itself")

        // The HTTP body is the same timeline.
        let http = try XCTUnwrap(Proc.http("GET", port: admin, path: "/timeline"))
        let viaHTTP = try BeatTimeline.decode(http.body, clusterId: "late")
        XCTAssertEqual(viaHTTP.timeline, timeline.timeline)
        XCTAssertEqual(viaHTTP.phases, ["plan", "work", "review"])

        // Hostile frames on the beat subject: refused with the decoder's reason.
        var nc: OpaquePointer?
        XCTAssertEqual(natsConnection_ConnectTo(&nc, nats.url), NATS_OK)
        defer { natsConnection_Destroy(nc) }
        natsConnection_PublishString(nc, "backbeat.late.beat", #"{"type":"backbeat.beatframe.v1"}"#)
        natsConnection_PublishString(nc, "backbeat.late.beat", "not json")
        // A request whose reply subject is one of ours is not answered, and counted.
        natsConnection_PublishRequestString(nc, "backbeat.late.timeline", "backbeat.late.beat", "{}")
        natsConnection_Flush(nc)

        var refusals: [String] = []
        var firstFrame: Beat?
        let watchdog = Task {
            try? await Task.sleep(nanoseconds: 8_000_000_000)
            client.close()
        }
        defer { watchdog.cancel() }
        for await event in client.events {
            if case .refused(let reason) = event { refusals.append(reason) }
            if case .beat(let beat) = event, beat.index >= next.index { firstFrame = beat }
            if firstFrame != nil && refusals.count >= 2 { break }
        }
        XCTAssertEqual(refusals, ["missing_field", "malformed_json"])
        let frame = try XCTUnwrap(firstFrame, "a frame arrived")
        XCTAssertEqual(frame.index, next.index, "the next frame is the beat the joiner expected")
        XCTAssertEqual(frame.phase, next.phase)
        XCTAssertEqual(frame.windowId, next.windowId)
        let metrics = String(decoding: Proc.http("GET", port: admin, path: "/metrics")?.body ?? Data(), as: UTF8.self)
        XCTAssertTrue(
            metrics.contains(
                #"backbeat_rejected_input_total{surface="timeline_subject",reason="bad_reply_subject"} 1"#),
            metrics.split(separator: "\n").filter { $0.contains("rejected") }.joined(separator: "\n"))
    }
}
