// A consumer of a nats-kv cluster (issue 21, review of 2026-12-07, finding
// 1): three real `pulse` processes in `-election nats-kv` mode on a real
// JetStream nats-server. A follower's timeline reply must tell the term the
// holder's frames carry: a consumer raises its fence to the reply's term
// (`FrameTracker.noteTimeline`), and a follower that reported the lease
// key's last *renewal* revision (every 50 ms a new one, past the holder's
// term) made the consumer refuse the holder's frames as `stale_term`.
import BackbeatClient
import CNats
import Foundation
import Glibc
import XCTest

final class KVLeaseClientProcessTests: XCTestCase {
    /// Three pulses `k1`-`k3` in nats-kv mode at `bpm` on one JetStream
    /// server; the caller stops `nodes` and removes `dir`.
    private func kvCluster(_ cluster: String, bpm: Int, dir: String) throws -> (
        nats: NatsServerProcess, nodes: [PulseNodeProcess], admins: [Int], names: [String]
    ) {
        let nats = try NatsServerProcess(arguments: ["-js", "-sd", dir + "/js"])
        let names = ["k1", "k2", "k3"]
        let admins = names.map { _ in Proc.freePort() }
        var nodes: [PulseNodeProcess] = []
        do {
            for (i, name) in names.enumerated() {
                nodes.append(
                    try PulseNodeProcess(
                        arguments: [
                            "-election", "nats-kv", "-bpm", "\(bpm)", "-max-bpm", "\(bpm)", "-cluster", cluster,
                            "-node-id", name, "-nats", nats.url, "-data-dir", "\(dir)/\(name)", "-admin-port",
                            "\(admins[i])",
                        ], logPath: "\(dir)/\(name).log"))
            }
        } catch {
            for node in nodes { node.stop() }
            throw error
        }
        return (nats, nodes, admins, names)
    }

    func testAFollowersTimelineReplyDoesNotFenceOutTheHoldersFrames() throws {
        let dir = Proc.tempDir("kvfence")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (nats, nodes, admins, names) = try kvCluster("kvfence", bpm: 600, dir: dir)
        defer { for node in nodes { node.stop() } }
        var logs: String { nodes.map(\.log).joined(separator: "\n---\n") }
        func timeline(_ i: Int) -> BeatTimeline? {
            guard let answer = Proc.http("GET", port: admins[i], path: "/timeline"), answer.status == 200 else {
                return nil
            }
            return try? BeatTimeline.decode(answer.body, clusterId: "kvfence")
        }
        var holderIndex: Int?
        Proc.waitUntil(seconds: 20) {
            holderIndex = (0..<3).first { i in
                guard let answer = Proc.http("GET", port: admins[i], path: "/leader") else { return false }
                return Proc.json(answer.body)["is_leader"] as? Bool == true
            }
            return holderIndex != nil && timeline(holderIndex!) != nil
        }
        let holder = try XCTUnwrap(holderIndex, logs)
        let follower = (holder + 1) % 3
        // A second of renewals: the lease key's revision is far past the holder's term.
        usleep(1_000_000)
        var followerReply: BeatTimeline?
        Proc.waitUntil(seconds: 10) {
            followerReply = timeline(follower)
            return followerReply != nil
        }
        let reply = try XCTUnwrap(followerReply, "the follower answers /timeline\n\(logs)")
        let holderReply = try XCTUnwrap(timeline(holder), logs)
        XCTAssertEqual(reply.term, holderReply.term, "the follower reports the holder's fencing token")
        XCTAssertEqual(reply.leader, names[holder], "the follower names the holder")
        XCTAssertEqual(holderReply.leader, names[holder])
        XCTAssertFalse(reply.degraded)

        // The consumer fenced by the follower's reply accepts the holder's next frames.
        var tracker = FrameTracker(clusterId: "kvfence")
        tracker.noteTimeline(reply)
        var nc: OpaquePointer?
        XCTAssertEqual(natsConnection_ConnectTo(&nc, nats.url), NATS_OK)
        defer { natsConnection_Destroy(nc) }
        var sub: OpaquePointer?
        XCTAssertEqual(natsConnection_SubscribeSync(&sub, nc, "backbeat.kvfence.beat"), NATS_OK)
        defer { natsSubscription_Destroy(sub) }
        var accepted: [Beat] = []
        var refusals: [String] = []
        for _ in 0..<50 where accepted.count < 5 {
            var msg: OpaquePointer?
            guard natsSubscription_NextMsg(&msg, sub, 1_000) == NATS_OK, let msg else { continue }
            defer { natsMsg_Destroy(msg) }
            var now = timespec()
            clock_gettime(CLOCK_REALTIME, &now)
            let receivedNs = Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
            let bytes = UnsafeRawBufferPointer(
                start: natsMsg_GetData(msg), count: Int(natsMsg_GetDataLength(msg)))
            for event in tracker.receive(bytes, receivedNs: receivedNs, timeline: reply) {
                if case .beat(let beat) = event { accepted.append(beat) }
                if case .refused(let reason) = event { refusals.append(reason) }
            }
        }
        // The fence is the point: a frame late after a stall of this loaded
        // machine may be `index_behind` against the fixed timeline, no
        // frame may be refused for its term (review of 2026-12-07 11:25, item 7).
        XCTAssertEqual(
            refusals.filter { $0 == "stale_term" || $0 == "term_ahead" }, [], "fence \(tracker.fenceTerm)\n\(logs)")
        XCTAssertGreaterThanOrEqual(accepted.count, 5, "the holder's frames are beats\n\(logs)")
        XCTAssertEqual(Set(accepted.map(\.frame.term)), [reply.term], "frames carry the reported term")
    }

    /// Second review of 2026-12-07 (11:25), item 2: KV terms jump by every
    /// renewal, so a new holder's term is far more than `maxTermLead` above
    /// the old one. The new holder publishes the timeline when it takes over
    /// (as a Raft leader does): a consumer learns the new fencing token from
    /// it and follows the hand-over losing at most the one frame that raced it.
    func testAConsumerFollowsAHandOverToTheNewHoldersTerm() async throws {
        let dir = Proc.tempDir("kvhand")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (nats, nodes, admins, _) = try kvCluster("kvhand", bpm: 120, dir: dir)
        defer { for node in nodes { node.stop() } }
        var logs: String { nodes.map(\.log).joined(separator: "\n---\n") }
        func isHolder(_ i: Int) -> Bool {
            guard let answer = Proc.http("GET", port: admins[i], path: "/leader") else { return false }
            return Proc.json(answer.body)["is_leader"] as? Bool == true
        }
        var holderIndex: Int?
        Proc.waitUntil(seconds: 20) {
            holderIndex = (0..<3).first(where: isHolder)
            return holderIndex != nil
        }
        let holder = try XCTUnwrap(holderIndex, logs)
        // Timeline publications, read raw (the client only takes them as hints).
        var nc: OpaquePointer?
        XCTAssertEqual(natsConnection_ConnectTo(&nc, nats.url), NATS_OK)
        defer { natsConnection_Destroy(nc) }
        var timelineSub: OpaquePointer?
        XCTAssertEqual(natsConnection_SubscribeSync(&timelineSub, nc, "backbeat.kvhand.timeline"), NATS_OK)
        defer { natsSubscription_Destroy(timelineSub) }

        var options = BackbeatClientOptions(url: nats.url, clusterId: "kvhand")
        options.connectTimeoutMs = 10_000
        let client = try await BackbeatClient.connect(options)
        defer { client.close() }
        let watchdog = Task {
            try? await Task.sleep(nanoseconds: 25_000_000_000)
            client.close()
        }
        defer { watchdog.cancel() }
        var terms: [UInt64] = []
        var refusals: [String] = []
        var stopped = false
        var beatsSeen = 0
        for await event in client.events {
            switch event {
            case .beat(let beat), .degraded(let beat):
                beatsSeen += 1
                if terms.last != beat.frame.term { terms.append(beat.frame.term) }
            case .refused(let reason): refusals.append(reason)
            default: break
            }
            if !stopped && beatsSeen >= 3 && terms.count == 1 {
                // A few beats of the first holder seen: hand over.
                stopped = true
                nodes[holder].kill(SIGTERM)
            }
            if terms.count >= 2, terms.last != terms.first {
                // Four more beats of the new term, then stop listening.
                var more = 0
                for await next in client.events {
                    if case .beat(let beat) = next, beat.frame.term == terms.last { more += 1 }
                    if case .refused(let reason) = next { refusals.append(reason) }
                    if more >= 4 { break }
                }
                break
            }
        }
        XCTAssertGreaterThanOrEqual(terms.count, 2, "the consumer follows the new holder: \(terms)\n\(logs)")
        let newTerm = try XCTUnwrap(terms.last)
        XCTAssertGreaterThan(newTerm, try XCTUnwrap(terms.first) + 8, "KV terms jump past maxTermLead")
        XCTAssertLessThanOrEqual(
            refusals.count, 1, "at most the frame that raced the take-over's timeline: \(refusals)\n\(logs)")
        // The new holder published the timeline with its term (none did before the fix).
        var published: [UInt64] = []
        for _ in 0..<20 {
            var msg: OpaquePointer?
            guard natsSubscription_NextMsg(&msg, timelineSub, 100) == NATS_OK, let msg else { break }
            defer { natsMsg_Destroy(msg) }
            let body = Data(bytes: natsMsg_GetData(msg), count: Int(natsMsg_GetDataLength(msg)))
            if let term = Proc.json(body)["term"] as? NSNumber { published.append(term.uint64Value) }
        }
        XCTAssertTrue(published.contains(newTerm), "timeline publications \(published), new term \(newTerm)\n\(logs)")
    }
}
