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
    func testAFollowersTimelineReplyDoesNotFenceOutTheHoldersFrames() throws {
        let dir = Proc.tempDir("kvfence")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let nats = try NatsServerProcess(arguments: ["-js", "-sd", dir + "/js"])
        let names = ["k1", "k2", "k3"]
        let admins = names.map { _ in Proc.freePort() }
        var nodes: [PulseNodeProcess] = []
        defer { for node in nodes { node.stop() } }
        for (i, name) in names.enumerated() {
            nodes.append(
                try PulseNodeProcess(
                    arguments: [
                        "-election", "nats-kv", "-bpm", "600", "-max-bpm", "600", "-cluster", "kvfence", "-node-id",
                        name, "-nats", nats.url, "-data-dir", "\(dir)/\(name)", "-admin-port", "\(admins[i])",
                    ], logPath: "\(dir)/\(name).log"))
        }
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
        XCTAssertEqual(refusals, [], "fence \(tracker.fenceTerm)\n\(logs)")
        XCTAssertGreaterThanOrEqual(accepted.count, 5, "the holder's frames are beats\n\(logs)")
        XCTAssertEqual(Set(accepted.map(\.frame.term)), [reply.term], "frames carry the reported term")
    }
}
