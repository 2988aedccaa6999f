// The JetStream KV adapter (Sources/Pulse/KV/KVBuckets.swift) against a real
// `nats-server -js`: the lease key's create-if-absent, CAS renewal, read,
// delete with the revision check, expiry with the bucket's TTL, and the
// timeline key's CAS writes and watch. Without JetStream: one start-up line
// naming the cause, and `pulse -election nats-kv` exits with status 1.
import CNats
import Foundation
import PulsePolicy
import Synchronization
import XCTest

@testable import Pulse

final class KVBucketsTests: XCTestCase {
    private func open(_ server: NatsServer, cluster: String, ttlNs: Int64 = 600_000_000) throws -> KVBuckets {
        try KVBuckets(
            servers: [server.url], clusterId: cluster, replicas: 1, ttlNs: ttlNs, name: "kv test",
            applySecurity: { _ in })
    }

    func testLeaseOperationsAgainstJetStream() throws {
        let server = try NatsServer(jetStream: true)
        let kv = try open(server, cluster: "kvt1")
        let other = try open(server, cluster: "kvt1")  // a second node opens the same buckets
        XCTAssertEqual(kv.leaseBucket, "backbeat_kvt1_lease")

        XCTAssertEqual(kv.leaseNow(.read, owner: "a"), .absent)
        guard case .written(let r1) = kv.leaseNow(.create, owner: "a") else { return XCTFail("create") }
        XCTAssertEqual(other.leaseNow(.create, owner: "b"), .conflict, "the key exists")
        guard case .written(let r2) = kv.leaseNow(.update(lastRevision: r1), owner: "a") else {
            return XCTFail("renew")
        }
        XCTAssertGreaterThan(r2, r1)
        XCTAssertEqual(other.leaseNow(.update(lastRevision: r1), owner: "b"), .conflict, "a stale revision")
        XCTAssertEqual(other.leaseNow(.read, owner: "b"), .found(revision: r2, owner: "a"))
        XCTAssertEqual(kv.leaseNow(.delete(lastRevision: r1), owner: "a"), .conflict, "delete checks the revision")
        guard case .written = kv.leaseNow(.delete(lastRevision: r2), owner: "a") else { return XCTFail("delete") }
        XCTAssertEqual(other.leaseNow(.read, owner: "b"), .absent, "a delete marker reads as no key")
        // A create over the delete marker (the hand-over's successor): a greater revision.
        guard case .written(let r3) = other.leaseNow(.create, owner: "b") else { return XCTFail("take over") }
        XCTAssertGreaterThan(r3, r2)

        // Not renewed: the key expires with the bucket's TTL and can be taken again.
        let sent = Date()
        var r4: UInt64 = 0
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) {
                if case .written(let rev) = kv.leaseNow(.create, owner: "a") { r4 = rev }
                return r4 != 0
            })
        let waited = Date().timeIntervalSince(sent)
        XCTAssertGreaterThan(waited, 0.45, "not before the TTL (600 ms from b's create)")
        XCTAssertLessThan(waited, 1.5)
        XCTAssertGreaterThan(r4, r3, "revisions only grow: the fencing token")
        XCTAssertEqual(
            other.leaseNow(.update(lastRevision: r3), owner: "b"), .conflict, "the stale holder's renewal fails")
    }

    /// A lease operation does not queue behind timeline writes or forwarded
    /// requests (review of 2026-12-07): with 400 timeline writes queued
    /// (each one or two JetStream round trips), a create is answered while
    /// most of them still wait.
    func testALeaseOperationDoesNotWaitBehindTimelineWrites() throws {
        let server = try NatsServer(jetStream: true)
        let kv = try open(server, cluster: "kvq")
        let backlog = 400
        let written = Mutex(0)
        let record = Array(#"{"term":1}"#.utf8)
        for _ in 0..<backlog {
            kv.writeTimeline(record, lastRevision: 0) { _ in written.withLock { $0 += 1 } }
        }
        let answered = DispatchSemaphore(value: 0)
        let reply = Mutex<KVLeaseReply?>(nil)
        let writtenThen = Mutex(0)
        let sent = Date()
        kv.lease(.create, owner: "k1 1-1") { r in
            writtenThen.withLock { $0 = written.withLock { $0 } }
            reply.withLock { $0 = r }
            answered.signal()
        }
        XCTAssertEqual(answered.wait(timeout: .now() + 10), .success)
        let ms = Date().timeIntervalSince(sent) * 1000
        guard case .written = reply.withLock({ $0 }) else {
            return XCTFail("create: \(String(describing: reply.withLock { $0 }))")
        }
        let done = writtenThen.withLock { $0 }
        print("nats-kv: lease create answered after \(ms) ms with \(done) of \(backlog) timeline writes done")
        XCTAssertLessThan(done, backlog / 2, "the lease did not wait for the timeline writes")
        XCTAssertTrue(Harness.waitUntil(seconds: 30) { written.withLock { $0 } == backlog }, "the writes all ran")
    }

    func testTimelineWritesAndWatch() throws {
        let server = try NatsServer(jetStream: true)
        let kv = try open(server, cluster: "kvt2")
        let seen = Seen()
        XCTAssertTrue(kv.watch(lease: false) { seen.append($0) })
        guard case .written(let t1) = kv.writeTimelineNow(Array("one".utf8), lastRevision: 0) else {
            return XCTFail("create")
        }
        XCTAssertEqual(kv.writeTimelineNow(Array("dup".utf8), lastRevision: 0), .conflict)
        guard case .written(let t2) = kv.writeTimelineNow(Array("two".utf8), lastRevision: t1) else {
            return XCTFail("cas")
        }
        XCTAssertEqual(kv.writeTimelineNow(Array("stale".utf8), lastRevision: t1), .conflict)
        XCTAssertTrue(Harness.waitUntil(seconds: 5) { seen.entries.count >= 2 })
        let entries = seen.entries
        XCTAssertEqual(entries.map(\.revision), [t1, t2])
        XCTAssertEqual(entries.map { String(decoding: $0.value ?? [], as: UTF8.self) }, ["one", "two"])
        // The timeline bucket has no TTL: the record outlives the lease's.
        usleep(800_000)
        XCTAssertEqual(kv.writeTimelineNow(Array("three".utf8), lastRevision: t2).isWritten, true)
        kv.close()
    }

    func testNoJetStreamIsOneStartupLine() throws {
        let server = try NatsServer()  // without -js
        XCTAssertThrowsError(try open(server, cluster: "kvt3")) { error in
            let line = "\(error)"
            XCTAssertTrue(line.contains("JetStream is not enabled"), line)
            XCTAssertFalse(line.contains("\n"))
        }
        let result = try runPulse(
            [
                "-election", "nats-kv", "-nats", server.url, "-cluster", "kvt3", "-admin-port", "0", "-data-dir",
                Harness.tempDir("kv-nojs"),
            ], timeout: 20)
        XCTAssertEqual(result.status, 1, result.stderr)
        let lines = result.stderr.split(separator: "\n").filter { $0.contains("JetStream") }
        XCTAssertEqual(lines.count, 1, result.stderr)
        XCTAssertTrue(lines.first?.contains("-election nats-kv: JetStream is not enabled") ?? false, result.stderr)
    }

    func testElectionFlagRules() throws {
        XCTAssertEqual(try PulseCommand.parseConfig([], environment: [:]).election, "raft")
        let kv = try PulseCommand.parseConfig(
            ["-election", "nats-kv", "-kv-replicas", "3"], environment: [:])
        XCTAssertTrue(kv.natsKV)
        XCTAssertEqual(kv.kvReplicas, 3)
        XCTAssertEqual(
            try PulseCommand.parseConfig([], environment: ["BACKBEAT_ELECTION": "nats-kv"]).election, "nats-kv")
        for (args, words) in [
            (["-election", "paxos"], "-election must be raft or nats-kv"),
            (["-election", "nats-kv", "-peers", "a@127.0.0.1:1"], "takes no -peers"),
            (["-election", "nats-kv", "-cluster", "a:b"], "names the KV buckets"),
            (["-election", "nats-kv", "-kv-replicas", "9"], "-kv-replicas must be between 1 and 5"),
        ] {
            XCTAssertThrowsError(try PulseCommand.parseConfig(args, environment: [:])) { error in
                XCTAssertTrue("\(error)".contains(words), "\(args): \(error)")
            }
        }
    }
}

private final class Seen: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [KVWatched] = []
    func append(_ entry: KVWatched) {
        lock.lock()
        list.append(entry)
        lock.unlock()
    }
    var entries: [KVWatched] {
        lock.lock()
        defer { lock.unlock() }
        return list
    }
}

extension KVWriteReply {
    fileprivate var isWritten: Bool {
        if case .written = self { return true }
        return false
    }
}
