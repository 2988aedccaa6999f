// A fake Raft peer against a real 3-node cluster (issue #9): it knows only
// the public -peers names (Raft ids are hashes of them) and speaks the wire
// protocol (transport v2 header, `Message.encode`). Its well-formed but
// hostile messages killed every node before (term 2^64−1 → overflow, then a
// crash loop on restart; commit or acknowledgement beyond the log, a second
// leader, rejectHint 2^64−1 → preconditions and overflow). Now: every node
// stays up, the beat subject keeps exactly one publisher with no repeated
// index, each refusal is counted on /metrics, and the nodes restart from
// their data dirs.
import Foundation
import Glibc
import Raft
import XCTest

@testable import Pulse

final class HostilePeerTests: XCTestCase {
    /// One transport v2 frame around `payload`, with the given clock stamps.
    func frame(_ payload: [UInt8], sendNs: Int64, echoSendNs: Int64 = 0, echoRecvNs: Int64 = 0) -> [UInt8] {
        Self.rawFrame(payload, sendNs: sendNs, echoSendNs: echoSendNs, echoRecvNs: echoRecvNs)
    }

    static func rawFrame(_ payload: [UInt8], sendNs: Int64, echoSendNs: Int64 = 0, echoRecvNs: Int64 = 0) -> [UInt8] {
        var out: [UInt8] = [0xBB, 2, 0, 0]
        let length = UInt32(payload.count)
        for k in 0..<4 { out.append(UInt8(truncatingIfNeeded: length >> (8 * k))) }
        for value in [sendNs, echoSendNs, echoRecvNs] {
            let bits = UInt64(bitPattern: value)
            for k in 0..<8 { out.append(UInt8(truncatingIfNeeded: bits >> (8 * k))) }
        }
        return out + payload
    }

    func frame(_ m: Message, echoSendNs: Int64 = 0, echoRecvNs: Int64 = 0) -> [UInt8] {
        var payload: [UInt8] = []
        m.encode(into: &payload)
        return frame(payload, sendNs: Self.realtimeNs(), echoSendNs: echoSendNs, echoRecvNs: echoRecvNs)
    }

    /// The `from` of the message in a frame built by `frame` (bytes 32 + 3 ..< 32 + 11).
    static func sender(of frame: [UInt8]) -> NodeID {
        (0..<8).reduce(NodeID(0)) { $0 | NodeID(frame[35 + $1]) << (8 * $1) }
    }

    static func realtimeNs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    /// `backbeat_rejected_input_total{surface="raft",reason=…}` of one node, by reason.
    func raftRejections(_ metrics: String) -> [String: Double] { Self.raftRejections(metrics) }

    static func raftRejections(_ metrics: String) -> [String: Double] {
        var out: [String: Double] = [:]
        for line in metrics.split(separator: "\n")
        where line.hasPrefix("backbeat_rejected_input_total{") && line.contains("surface=\"raft\"") {
            guard let start = line.range(of: "reason=\"")?.upperBound,
                let end = line[start...].firstIndex(of: "\""),
                let value = line.split(separator: " ").last.flatMap({ Double($0) })
            else { continue }
            out[String(line[start..<end]), default: 0] += value
        }
        return out
    }

    /// A 3-node cluster named `name` at 600 bpm, its leader, and a subscriber
    /// to its beat that has seen 3 frames (both asserted, at the caller's line).
    private func publishingCluster(
        _ name: String, file: StaticString = #filePath, line: UInt = #line
    ) throws -> (cluster: PulseCluster, subscriber: Subscriber, leader: Int) {
        let cluster = try PulseCluster(cluster: name, bpm: 600)
        let subscriber = try Subscriber(url: cluster.nats.url, subject: "backbeat.\(name).beat")
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs, file: file, line: line)
        XCTAssertTrue(subscriber.wait(for: 3, seconds: 10), cluster.logs, file: file, line: line)
        return (cluster, subscriber, leader)
    }

    /// Stops and restarts the follower after `leader`, asserting (at the
    /// caller's line) that it hears the leader within 5 s; returns its index.
    private func restartFollower(
        after leader: Int, in cluster: PulseCluster, file: StaticString = #filePath, line: UInt = #line
    ) throws -> Int {
        let follower = (leader + 1) % 3
        cluster.nodes[follower]?.stop()
        try cluster.start(follower)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) { cluster.get(follower, "/leader")["leader"] is String },
            "the restarted follower hears the leader\n\(cluster.logs)", file: file, line: line)
        return follower
    }

    func testHostilePeerNeitherCrashesNorSilencesTheCluster() throws {
        let (cluster, subscriber, leader) = try publishingCluster("hostile")
        let stats = try XCTUnwrap(cluster.get(leader, "/leader")["stats"] as? [String: Any])
        let term = try XCTUnwrap((stats["term"] as? NSNumber)?.uint64Value)
        // What an outsider knows: the -peers names, hence the ids.
        let ids = cluster.names.map(PeerList.stableId)
        let followers = (0..<3).filter { $0 != leader }
        let attackStart = subscriber.count

        // Connections that never send: closed after the handshake timeout.
        let idle = try (0..<3).map { try RawClient(port: cluster.raftPorts[$0], timeoutMs: 6000) }

        for i in 0..<3 {
            let me = ids[i]
            let other = ids[(i + 1) % 3]
            var frames: [[UInt8]] = [
                // term 2^64−1 from a member, to the leader and to each follower.
                frame(Message(kind: .heartbeat, from: other, to: me, term: .max, commit: 1)),
                // term 2^62−1: adopted and persisted before, and then no node
                // ever campaigned again (review of #9, finding 2); now a node
                // with a live leader ignores it (stickiness).
                frame(Message(kind: .heartbeat, from: other, to: me, term: RaftNode.freeTermLimit - 1)),
                frame(Message(kind: .vote, from: other, to: me, term: .max - 1, logTerm: 1, index: 1 << 40)),
            ]
            if i == leader {
                let follower = ids[followers[0]]
                frames += [
                    // An acknowledgement beyond the leader's log.
                    frame(Message(kind: .appendResponse, from: follower, to: me, term: term, index: 1 << 40)),
                    // A rejection with rejectHint 2^64−1.
                    frame(
                        Message(
                            kind: .appendResponse, from: follower, to: me, term: term, index: 1, reject: true,
                            rejectHint: .max)),
                    // A second leader of the leader's own term.
                    frame(Message(kind: .heartbeat, from: follower, to: me, term: term, commit: 1)),
                ]
            } else {
                let otherFollower = ids[followers.first { $0 != i }!]
                frames += [
                    // A heartbeat "from the leader" whose commit lies beyond the log,
                    // with a poisoned clock echo (t2 = Int64.min).
                    frame(
                        Message(kind: .heartbeat, from: ids[leader], to: me, term: term, commit: 1 << 40),
                        echoSendNs: 1, echoRecvNs: .min),
                    // A snapshot "from the leader" whose state the node refuses
                    // (bpm 0): it was persisted before, and the node then refused
                    // to start (review of #9, finding 6); now the core refuses it.
                    frame(
                        Message(
                            kind: .snapshot, from: ids[leader], to: me, term: term,
                            snapshot: Snapshot(
                                index: 1 << 20, term: term,
                                data: Array(#"{"epoch":{"startBeat":0,"startNs":0,"bpm":0},"justification":""}"#.utf8)))
                    ),
                    // An append from a second leader of the same term.
                    frame(
                        Message(
                            kind: .append, from: otherFollower, to: me, term: term, logTerm: 0, index: 0,
                            commit: 1 << 40, entries: [Entry(index: 1, term: term, data: [0xEE])])),
                ]
            }
            // A connection speaks for one member (RaftTransport, "Slots"): the
            // frames "from" each member go on a connection of their own.
            for (from, group) in Dictionary(grouping: frames, by: { Self.sender(of: $0) }) {
                let client = try RawClient(port: cluster.raftPorts[i])
                XCTAssertTrue(client.send(bytes: group.flatMap { $0 }), "node \(i) takes the frames from \(from)")
            }
            // A sender that is not a member: refused, and the connection is closed.
            let client = try RawClient(port: cluster.raftPorts[i])
            XCTAssertTrue(
                client.send(
                    bytes: frame(Message(kind: .heartbeat, from: PeerList.stableId("intruder"), to: me, term: term))))
            XCTAssertTrue(client.waitForClose(), "node \(i) closes the connection of an unknown sender")
            // A connection that proved itself as one member, then speaks for another.
            let turncoat = try RawClient(port: cluster.raftPorts[i])
            turncoat.send(
                bytes: frame(Message(kind: .heartbeatResponse, from: other, to: me, term: 0))
                    + frame(Message(kind: .heartbeatResponse, from: ids[(i + 2) % 3], to: me, term: 0)))
            XCTAssertTrue(turncoat.waitForClose(), "node \(i) closes a connection that changes its member")
            // Garbage bytes.
            let garbage = try RawClient(port: cluster.raftPorts[i])
            garbage.send(
                bytes: Array("\u{1}\u{2}hello raft\r\n".utf8) + (0..<512).map { _ in UInt8.random(in: 0...255) })
            XCTAssertTrue(garbage.waitForClose(), "node \(i) closes a connection that sent garbage")
        }

        for (i, client) in idle.enumerated() {
            XCTAssertTrue(client.waitForClose(), "node \(i) closes a connection that never sent a frame")
        }
        // Still alive, still one publisher, no repeated index.
        for i in 0..<3 {
            XCTAssertTrue(cluster.nodes[i]?.process.isRunning ?? false, "node \(i) is alive\n\(cluster.logs)")
        }
        let afterAttack = subscriber.count
        XCTAssertTrue(subscriber.wait(for: afterAttack + 10, seconds: 5), "beats go on\n\(cluster.logs)")
        let frames = subscriber.received[attackStart...].compactMap { f -> (index: Int64, from: String)? in
            guard let index = (f.object["beat_index"] as? NSNumber)?.int64Value, let hlc = f.object["hlc"] as? String
            else { return nil }
            return (index, String(hlc.split(separator: ":").last ?? ""))
        }
        XCTAssertEqual(Set(frames.map(\.from)).count, 1, "exactly one publisher: \(Set(frames.map(\.from)))")
        for (a, b) in zip(frames, frames.dropFirst()) {
            XCTAssertGreaterThan(b.index, a.index, "no repeated index\n\(cluster.logs)")
        }
        XCTAssertEqual(cluster.leader(), leader, "the leader is undisturbed")

        // Every refusal counted, by reason.
        for i in 0..<3 {
            let counted = raftRejections(try cluster.metrics(i))
            var expected = ["term_absurd", "unknown_sender", "bad_magic", "handshake_timeout", "peer_mismatch"]
            expected +=
                i == leader
                ? ["index_beyond_log", "hint_beyond_log", "second_leader"]
                : ["commit_beyond_log", "second_leader", "clock_timestamp_out_of_range", "bad_snapshot"]
            for reason in expected {
                XCTAssertGreaterThan(counted[reason] ?? 0, 0, "node \(i) counts \(reason): \(counted)")
            }
            XCTAssertGreaterThanOrEqual(counted["term_absurd"] ?? 0, 2, "node \(i): \(counted)")
        }

        // No crash loop: every node restarts from its data dir and the beat goes on,
        // even when the forged term 2^62−1 reaches the restarted nodes before any
        // leader does (nothing is sticky then, so it may be adopted): they still elect.
        cluster.stopAll()
        let stoppedAt = subscriber.count
        for i in 0..<3 { try cluster.start(i) }
        for i in 0..<3 {
            var client: RawClient?
            Harness.waitUntil(seconds: 5) {
                client = try? RawClient(port: cluster.raftPorts[i])
                return client != nil
            }
            let forged = frame(
                Message(kind: .heartbeat, from: ids[(i + 1) % 3], to: ids[i], term: RaftNode.freeTermLimit - 1))
            XCTAssertTrue(client?.send(bytes: forged) ?? false, "node \(i) takes the forged term after its restart")
        }
        XCTAssertTrue(subscriber.wait(for: stoppedAt + 5, seconds: 15), "beats after the restart\n\(cluster.logs)")
        for i in 0..<3 {
            XCTAssertTrue(cluster.nodes[i]?.process.isRunning ?? false, "node \(i) restarted\n\(cluster.logs)")
        }
        XCTAssertNotNil(cluster.leader(), "a leader after the restart\n\(cluster.logs)")
        let afterRestart = subscriber.count
        XCTAssertTrue(subscriber.wait(for: afterRestart + 5, seconds: 5), "beats go on\n\(cluster.logs)")
    }

    /// Sends frames from `make` to `port` at `perSecond` on its own thread for
    /// `seconds`, reconnecting whenever the node closes the connection; each
    /// connection starts with a burst of `burst` frames in one write.
    final class FrameFlood: @unchecked Sendable {  // `sent` and `connections` behind `lock`
        private let lock = NSLock()
        private var sentCount = 0
        private var connectionCount = 0
        private let done = DispatchSemaphore(value: 0)

        init(port: Int, perSecond: Int, burst: Int, seconds: Double, make: @escaping @Sendable () -> [UInt8]) {
            Thread { [self] in
                let end = Date().addingTimeInterval(seconds)
                var client: RawClient?
                while Date() < end {
                    if client == nil {
                        client = try? RawClient(port: port, timeoutMs: 1000)
                        guard let fresh = client else {
                            usleep(10_000)
                            continue
                        }
                        lock.withLock { connectionCount += 1 }
                        if !fresh.send(bytes: (0..<burst).flatMap { _ in make() }) { client = nil }
                        lock.withLock { sentCount += burst }
                        continue
                    }
                    let batch = max(1, perSecond / 100)  // every 10 ms
                    if client?.send(bytes: (0..<batch).flatMap { _ in make() }) != true { client = nil }
                    lock.withLock { sentCount += batch }
                    usleep(10_000)
                }
                done.signal()
            }.start()
        }

        /// Waits for the end of the flood; returns (frames sent, connections made).
        func wait() -> (sent: Int, connections: Int) {
            done.wait()
            return lock.withLock { (sentCount, connectionCount) }
        }
    }

    /// Adversarial review of #9, finding 3: 8000 frames a second "from" a
    /// follower — stale-term vote answers each with a fresh, plausible clock
    /// sample, and stale heartbeats each answered to the real peer — made the
    /// leader miss beats and lose leadership. Now the flood is held to its
    /// connection's rate (`rate_limited`), stale answers to one per peer per
    /// tick, and the clock fit stays bounded: the leader keeps leading and
    /// the beat has no gap.
    func testFloodOfStaleFramesNeitherStallsNorUnseatsTheLeader() throws {
        let (cluster, subscriber, leader) = try publishingCluster("flood")
        let ids = cluster.names.map(PeerList.stableId)
        let from = ids[(leader + 1) % 3]
        let to = ids[leader]
        let floodStart = subscriber.count
        let flood = FrameFlood(port: cluster.raftPorts[leader], perSecond: 8000, burst: 3000, seconds: 4) {
            let t1 = HostilePeerTests.realtimeNs() - 1_000_000
            var payload: [UInt8] = []
            let kind: MessageKind = Bool.random() ? .voteResponse : .heartbeat
            Message(kind: kind, from: from, to: to, term: 0).encode(into: &payload)
            return HostilePeerTests.rawFrame(payload, sendNs: t1 + 200_000, echoSendNs: t1, echoRecvNs: t1 + 100_000)
        }
        let (sent, _) = flood.wait()
        XCTAssertGreaterThan(sent, 20_000, "the flood ran")
        let floodEnd = subscriber.count
        XCTAssertTrue(subscriber.wait(for: floodEnd + 5, seconds: 5), "beats go on\n\(cluster.logs)")
        XCTAssertEqual(cluster.leader(), leader, "the leader kept leading\n\(cluster.logs)")
        let indexes = subscriber.received[floodStart...].compactMap {
            ($0.object["beat_index"] as? NSNumber)?.int64Value
        }
        XCTAssertGreaterThanOrEqual(indexes.count, 40, "about 10 beats a second during the 4 s flood")
        for (a, b) in zip(indexes, indexes.dropFirst()) {
            XCTAssertEqual(b, a + 1, "no missed or repeated beat during the flood\n\(cluster.logs)")
        }
        let counted = raftRejections(try cluster.metrics(leader))
        XCTAssertGreaterThan(counted["rate_limited"] ?? 0, 0, "the leader counts rate_limited: \(counted)")
    }

    /// Holds `perPort` connections to each of `ports` that send only id-less
    /// keepalives (what an outsider who knows no member id can send), every
    /// 500 ms, on its own thread until stopped; a connection the node closes
    /// is reopened at once (and counted), so the nodes' slots stay contested.
    final class KeepaliveHolders: @unchecked Sendable {  // state behind `lock`
        private let lock = NSLock()
        private var running = true
        private var reopened: [Int: Int] = [:]
        private var longest: [Int: Double] = [:]
        private let finished = DispatchSemaphore(value: 0)

        init(ports: [Int], perPort: Int) {
            Thread { [self] in
                let keepalive = HostilePeerTests.rawFrame([], sendNs: HostilePeerTests.realtimeNs())
                var clients: [Int: [(client: RawClient, opened: Date)?]] = [:]
                for port in ports { clients[port] = Array(repeating: nil, count: perPort) }
                func note(_ port: Int, _ opened: Date) {
                    let age = Date().timeIntervalSince(opened)
                    lock.withLock { longest[port] = max(longest[port] ?? 0, age) }
                }
                while lock.withLock({ running }) {
                    for port in ports {
                        for k in 0..<perPort {
                            if let held = clients[port]![k] {
                                if !Self.isClosed(held.client.fd) {
                                    held.client.send(bytes: keepalive)
                                    continue
                                }
                                note(port, held.opened)
                                lock.withLock { reopened[port, default: 0] += 1 }
                            }
                            let fresh = try? RawClient(port: port, timeoutMs: 500)
                            fresh?.send(bytes: keepalive)
                            clients[port]![k] = fresh.map { ($0, Date()) }
                        }
                    }
                    usleep(500_000)
                }
                for (port, held) in clients { for case let h? in held { note(port, h.opened) } }
                clients.removeAll()
                finished.signal()
            }.start()
        }

        /// The longest time one connection to `port` stayed open (seconds).
        func longestHeld(_ port: Int) -> Double { lock.withLock { longest[port] ?? 0 } }

        /// True if the peer closed `fd` (a non-blocking peek reads EOF or a reset).
        static func isClosed(_ fd: Int32) -> Bool {
            var byte: UInt8 = 0
            let n = recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
            return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        }

        /// Connections to `port` the node closed (and that were reopened).
        func reopenedCount(_ port: Int) -> Int { lock.withLock { reopened[port] ?? 0 } }

        func stop() {
            guard
                lock.withLock({ () -> Bool in
                    defer { running = false }
                    return running
                })
            else { return }
            finished.wait()
        }
    }

    /// Adversarial review of #9, finding 4: 40 connections sending only
    /// zero-length keepalives counted as proven peers (a keepalive was a
    /// valid frame): they could not be evicted and never went idle, so they
    /// held every slot. Now a keepalive without a member's id proves nothing:
    /// such connections close at the handshake timeout and give way to
    /// newcomers, and a restarted peer gets back in at once.
    func testKeepaliveOnlyConnectionsCannotHoldSlots() throws {
        let (cluster, subscriber, leader) = try publishingCluster("keepalive")
        let holders = KeepaliveHolders(ports: cluster.raftPorts, perPort: 40)
        defer { holders.stop() }
        usleep(1_000_000)
        // A follower restarts while every node's slots are contested.
        let follower = try restartFollower(after: leader, in: cluster)
        // Past the handshake timeout (2 s): the keepalive-only connections were closed.
        usleep(2_500_000)
        XCTAssertEqual(cluster.leader(), leader, "one leader, the same\n\(cluster.logs)")
        let before = subscriber.count
        XCTAssertTrue(subscriber.wait(for: before + 5, seconds: 5), "beats go on\n\(cluster.logs)")
        holders.stop()
        for i in 0..<3 where i != follower {
            // Before: they were proven peers and held their slots for the whole test (≥ 6 s).
            let port = cluster.raftPorts[i]
            XCTAssertLessThan(
                holders.longestHeld(port), 3.5,
                "node \(i) closes keepalive-only connections within the handshake timeout")
            XCTAssertGreaterThanOrEqual(holders.reopenedCount(port), 40, "node \(i)")
            let counted = raftRejections(try cluster.metrics(i))
            XCTAssertGreaterThan(counted["connection_limit"] ?? 0, 0, "node \(i): \(counted)")
        }
        // The restarted follower's connections were accepted at once and kept.
        let log = cluster.nodes[follower]?.log ?? ""
        let connects = log.split(separator: "\n").filter { $0.contains("raft: connected") }.count
        XCTAssertLessThanOrEqual(connects, 6, "the restarted follower had to reconnect over and over\n\(log)")
    }

    /// Opens silent connections to `ports` every 5 ms on its own thread until
    /// stopped, so every inbound slot stays taken by a socket that never sends.
    final class Flood: @unchecked Sendable {  // state behind `lock`
        private let lock = NSLock()
        private var running = true
        private var clients: [RawClient] = []
        private let ports: [Int]
        private let perRound: Int

        init(ports: [Int], perRound: Int) {
            self.ports = ports
            self.perRound = perRound
            Thread { [self] in run() }.start()
        }

        private func run() {
            while isRunning {
                for port in ports {
                    for _ in 0..<perRound { if let c = try? RawClient(port: port) { keep(c) } }
                }
                usleep(5_000)
            }
        }

        var isRunning: Bool {
            lock.lock()
            defer { lock.unlock() }
            return running
        }

        private func keep(_ client: RawClient) {
            lock.lock()
            clients.append(client)
            // Bounded fds, yet each is held far longer than the handshake timeout
            // (the node closes it first), so the slots stay taken.
            if clients.count > 4000 { clients.removeFirst(clients.count - 4000) }
            lock.unlock()
        }

        func stop() {
            lock.lock()
            running = false
            lock.unlock()
            usleep(200_000)
            lock.lock()
            clients.removeAll()
            lock.unlock()
        }
    }

    /// Silent connections keep every inbound slot of every node taken, all
    /// the time. A follower that restarts must still get its connections
    /// accepted (a newcomer takes the slot of the oldest connection that never
    /// sent a frame; a real peer sends a keepalive at once), so when the
    /// leader is then killed, the two survivors still elect a new one.
    func testSilentConnectionsCannotStarvePeers() throws {
        let (cluster, subscriber, leader) = try publishingCluster("slots")
        let flood = Flood(ports: cluster.raftPorts, perRound: 2)
        defer { flood.stop() }
        usleep(300_000)
        // A follower restarts: its new connections must find slots.
        let follower = try restartFollower(after: leader, in: cluster)
        usleep(500_000)
        // The leader dies: the survivors must talk to each other to elect.
        cluster.nodes[leader]?.signal(SIGKILL)
        cluster.nodes[leader] = nil
        let killedAt = subscriber.count
        var newLeader: Int?
        XCTAssertTrue(
            Harness.waitUntil(seconds: 8) {
                newLeader = (0..<3).first { $0 != leader && cluster.get($0, "/leader")["is_leader"] as? Bool == true }
                return newLeader != nil
            }, "the survivors elect a leader through flooded slots\n\(cluster.logs)")
        XCTAssertTrue(subscriber.wait(for: killedAt + 5, seconds: 8), "beats go on\n\(cluster.logs)")
        flood.stop()
        for i in 0..<3 where i != leader {
            let counted = raftRejections(try cluster.metrics(i))
            XCTAssertGreaterThan(counted["connection_limit"] ?? 0, 0, "node \(i): \(counted)")
        }
        // Its connections were accepted at once and kept: a refused one would be
        // retried (and logged) every 100 ms while the slots are taken.
        let log = cluster.nodes[follower]?.log ?? ""
        let connects = log.split(separator: "\n").filter { $0.contains("raft: connected") }.count
        XCTAssertLessThanOrEqual(connects, 6, "the restarted follower had to reconnect over and over\n\(log)")
    }
}
