// Membership changes at runtime with real processes (issue #12's
// acceptance): a 3-node cluster on loopback with a real nats-server and an
// independent subscriber; a dead node is removed and a new one (-join, a
// new name) added with `pulse members`, catches up and takes the lead — and
// across the whole run no beat index is missed or repeated and every frame
// is on the committed timeline. And a removed node that is still alive
// publishes nothing.
import Foundation
import Glibc
import PulseCore
import XCTest

final class MembershipProcessTests: XCTestCase {
    static let token = "members-secret"

    final class Cluster {
        let nats: NatsServer
        let dir: String
        let cluster: String
        let bpm: Int
        var names: [String] = []
        var raftPorts: [Int] = []
        var adminPorts: [Int] = []
        var nodes: [PulseProcess?] = []

        init(cluster: String, bpm: Int) throws {
            nats = try NatsServer()
            dir = Harness.tempDir(cluster)
            self.cluster = cluster
            self.bpm = bpm
            for i in 1...3 { addSlot("n\(i)") }
            let peers = self.peers(0..<3)
            for i in 0..<3 { try start(i, peers: peers, extra: ["-bootstrap"]) }
        }

        func addSlot(_ name: String) {
            names.append(name)
            raftPorts.append(Harness.freePort())
            adminPorts.append(Harness.freePort())
            nodes.append(nil)
        }

        func peers(_ indices: some Sequence<Int>) -> String {
            indices.map { "\(names[$0])@127.0.0.1:\(raftPorts[$0])" }.joined(separator: ",")
        }

        func start(_ i: Int, peers: String, extra: [String]) throws {
            nodes[i] = try PulseProcess(
                arguments: [
                    "-bpm", "\(bpm)", "-max-bpm", "600", "-cluster", cluster, "-node-id", names[i],
                    "-raft-bind", "127.0.0.1:\(raftPorts[i])", "-peers", peers, "-nats", nats.url,
                    "-data-dir", "\(dir)/\(names[i])", "-admin-port", "\(adminPorts[i])",
                    "-admin-token", MembershipProcessTests.token, "-raft-compact-every", "4",
                    "-degrade-after-ms", "800",
                ] + extra, logPath: "\(dir)/\(names[i]).log")
        }

        func admin(_ i: Int) -> String { "http://127.0.0.1:\(adminPorts[i])" }
        var allAdmins: String { names.indices.filter { nodes[$0] != nil }.map(admin).joined(separator: ",") }

        func get(_ i: Int, _ path: String) -> [String: Any] { PulseCluster.adminJSON(port: adminPorts[i], path) }

        func leader(seconds: Double = 10) -> Int? {
            var found: Int?
            Harness.waitUntil(seconds: seconds) {
                found = self.names.indices.first {
                    self.nodes[$0] != nil && self.get($0, "/leader")["is_leader"] as? Bool == true
                }
                return found != nil
            }
            return found
        }

        func members(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
            try runPulse(
                ["members"] + arguments + ["--admin", allAdmins],
                environment: ["BACKBEAT_ADMIN_TOKEN": MembershipProcessTests.token])
        }

        var logs: String {
            names.map { name in
                "--- \(name)\n" + ((try? String(contentsOfFile: "\(dir)/\(name).log", encoding: .utf8)) ?? "")
            }.joined(separator: "\n")
        }

        deinit {
            for node in nodes { node?.stop() }
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    struct Frame {
        var index: Int64
        var from: String
        var term: UInt64
        var deadlineMs: Int64
        var receivedNs: Int64
    }

    private func frames(_ subscriber: Subscriber) -> [Frame] {
        subscriber.received.compactMap { frame in
            guard case .success(let o) = BeatFrameDecoder.result([UInt8](frame.raw)) else { return nil }
            return Frame(
                index: o.beatIndex, from: o.hlcSuffix, term: o.term, deadlineMs: o.deadlineUnixMs,
                receivedNs: frame.receivedNs)
        }
    }

    /// The committed timeline as a node reports it (`GET /timeline`).
    private func timeline(_ cluster: Cluster, _ i: Int) throws -> (startBeat: Int64, startNs: Int64, bpm: Int64) {
        let epoch = try XCTUnwrap(cluster.get(i, "/timeline")["epoch"] as? [String: Any], cluster.logs)
        return (
            try XCTUnwrap((epoch["start_beat"] as? NSNumber)?.int64Value),
            try XCTUnwrap((epoch["start_ns"] as? NSNumber)?.int64Value),
            try XCTUnwrap((epoch["bpm"] as? NSNumber)?.int64Value)
        )
    }

    func testReplaceADeadNodeMissesNoBeat() throws {
        let started = Date()
        let cluster = try Cluster(cluster: "members", bpm: 300)
        let subscriber = try Subscriber(url: cluster.nats.url, subject: "backbeat.members.beat")
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        XCTAssertTrue(subscriber.wait(for: 4, seconds: 10), cluster.logs)
        let epoch = try timeline(cluster, leader)

        // The node to replace: a follower (the leader keeps publishing meanwhile).
        let victim = try XCTUnwrap((0..<3).first { $0 != leader })
        cluster.nodes[victim]?.signal(SIGKILL)
        cluster.nodes[victim]?.process.waitUntilExit()
        cluster.nodes[victim] = nil

        // Unauthenticated changes are refused.
        let anonymous = try runPulse(["members", "remove", cluster.names[victim], "--admin", cluster.admin(leader)])
        XCTAssertEqual(anonymous.status, 1, anonymous.stderr)
        XCTAssertTrue(anonymous.stderr.contains("401"), anonymous.stderr)

        let removed = try cluster.members(["remove", cluster.names[victim]])
        XCTAssertEqual(removed.status, 0, removed.stderr + "\n" + cluster.logs)
        XCTAssertFalse(removed.stdout.contains(cluster.names[victim] + "\t"), removed.stdout)

        // The replacement: a new name, an empty data dir, -join.
        cluster.addSlot("n4")
        let newcomer = 3
        try cluster.start(newcomer, peers: cluster.peers(0..<4), extra: ["-join"])
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { cluster.get(newcomer, "/members")["voter"] as? Bool == false },
            "n4 is up, and no voter before it is added\n\(cluster.logs)")
        XCTAssertNil(cluster.get(newcomer, "/timeline")["epoch"], "n4 has no timeline before it is added")

        let added = try cluster.members(["add", "--name", "n4", "--raft", "127.0.0.1:\(cluster.raftPorts[newcomer])"])
        XCTAssertEqual(added.status, 0, added.stderr + "\n" + cluster.logs)
        XCTAssertTrue(added.stdout.contains("n4\t127.0.0.1:\(cluster.raftPorts[newcomer])"), added.stdout)

        // n4 catches up: the same timeline, the leader's commit index.
        XCTAssertTrue(
            Harness.waitUntil(seconds: 15) {
                guard cluster.get(newcomer, "/members")["voter"] as? Bool == true,
                    let mine = (cluster.get(newcomer, "/leader")["stats"] as? [String: Any])?["commit_index"]
                        as? NSNumber,
                    let theirs = (cluster.get(leader, "/leader")["stats"] as? [String: Any])?["commit_index"]
                        as? NSNumber
                else { return false }
                return mine.int64Value >= theirs.int64Value && cluster.get(newcomer, "/timeline")["epoch"] != nil
            }, "n4 applied the log\n\(cluster.logs)")
        let joined = try timeline(cluster, newcomer)
        XCTAssertEqual(joined.startNs, epoch.startNs)
        XCTAssertEqual(joined.bpm, epoch.bpm)

        // Leadership to the newcomer.
        let transfer = try cluster.members(["transfer", "n4"])
        XCTAssertEqual(transfer.status, 0, transfer.stderr + "\n" + cluster.logs)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { self.frames(subscriber).contains { $0.from == "n4" } },
            "n4 publishes as the leader\n\(cluster.logs)")
        let afterHandOver = subscriber.count
        XCTAssertTrue(subscriber.wait(for: afterHandOver + 5, seconds: 10), cluster.logs)

        let body = cluster.get(newcomer, "/members")
        let voters = (body["members"] as? [[String: Any]] ?? []).compactMap { $0["name"] as? String }.sorted()
        XCTAssertEqual(
            voters,
            [cluster.names[0], cluster.names[1], cluster.names[2], "n4"].filter { $0 != cluster.names[victim] }.sorted()
        )
        XCTAssertEqual(body["leader"] as? String, "n4")
        let metrics =
            try RawClient(port: cluster.adminPorts[newcomer], timeoutMs: 2000).request(
                httpRequest("GET", "/metrics"))?.text ?? ""
        XCTAssertTrue(metrics.contains("backbeat_raft_voters 3"), metrics)

        // The whole run: no index missed or repeated, every frame on the timeline.
        let list = frames(subscriber)
        XCTAssertGreaterThan(list.count, 10)
        for (a, b) in zip(list, list.dropFirst()) {
            XCTAssertEqual(
                b.index, a.index + 1, "beat \(b.index) after \(a.index) (from \(a.from) to \(b.from))\n\(cluster.logs)")
            XCTAssertGreaterThanOrEqual(b.term, a.term, "term went back")
        }
        for f in list {
            let instant = epoch.startNs + (f.index - epoch.startBeat) * 60_000_000_000 / epoch.bpm
            let next = epoch.startNs + (f.index + 1 - epoch.startBeat) * 60_000_000_000 / epoch.bpm
            XCTAssertEqual(f.deadlineMs, next / 1_000_000, "beat \(f.index) deadline off the timeline")
            let lateNs = f.receivedNs - instant
            XCTAssertTrue(
                lateNs > -5_000_000 && lateNs < 1_000_000_000, "beat \(f.index) received \(lateNs) ns from its instant")
        }
        XCTAssertEqual(Set(list.map(\.from)).count, 2, "the old leader, then n4: \(Set(list.map(\.from)))")
        XCTAssertLessThan(Date().timeIntervalSince(started), 60)
    }

    func testRemovedNodeThatIsStillAlivePublishesNothing() throws {
        let cluster = try Cluster(cluster: "removed", bpm: 300)
        let subscriber = try Subscriber(url: cluster.nats.url, subject: "backbeat.removed.beat")
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        XCTAssertTrue(subscriber.wait(for: 3, seconds: 10), cluster.logs)
        let victim = try XCTUnwrap((0..<3).first { $0 != leader })
        let removed = try cluster.members(["remove", cluster.names[victim]])
        XCTAssertEqual(removed.status, 0, removed.stderr + "\n" + cluster.logs)
        // It learned its removal (the leader's last append) and is no voter.
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) { cluster.get(victim, "/members")["voter"] as? Bool == false },
            cluster.logs)
        let again = try cluster.members(["remove", cluster.names[victim]])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.stderr.contains("not_member"), again.stderr)
        let theLeader = try cluster.members(["remove", cluster.names[leader]])
        XCTAssertEqual(theLeader.status, 1)
        XCTAssertTrue(theLeader.stderr.contains("is_leader"), theLeader.stderr)
        XCTAssertEqual(cluster.get(leader, "/leader")["cluster_size"] as? Int, 2)
        // Well past the degradation delay (800 ms) without a leader's contact.
        let mark = subscriber.count
        XCTAssertTrue(subscriber.wait(for: mark + 20, seconds: 10), cluster.logs)
        let suffix = String(cluster.names[victim].suffix(4))
        let late = frames(subscriber).dropFirst(mark)
        XCTAssertFalse(late.contains { $0.from == suffix }, "the removed node published\n\(cluster.logs)")
        let victimLog =
            (try? String(contentsOfFile: "\(cluster.dir)/\(cluster.names[victim]).log", encoding: .utf8)) ?? ""
        XCTAssertFalse(victimLog.contains("entering degradation"), victimLog)
        XCTAssertEqual(cluster.get(victim, "/drift")["degradation_mode"] as? Bool, false)
        let list = frames(subscriber)
        for (a, b) in zip(list, list.dropFirst()) { XCTAssertEqual(b.index, a.index + 1, cluster.logs) }
        XCTAssertEqual(cluster.get(leader, "/leader")["is_leader"] as? Bool, true)
    }
}
