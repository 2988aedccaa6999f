// Issue #19: persisted Raft state is restartable after any sequence of
// messages. The exact sequence, as a new user hits it on plain-TCP Raft: a
// follower receives AppendEntries (entries 1–3 of term 3, message term 5)
// and then a snapshot at (index 1, term 5). The core drops its whole log for
// the snapshot; the store used to keep entries 2–3 on disk, and the node
// then refused to start for good ("entry 2 has a lower term than its
// predecessor"). Now the stored log is the core's, and the node restarts.
import Foundation
import PulsePolicy
import Raft
import XCTest

@testable import Pulse

final class SnapshotInstallRestartTests: XCTestCase {
    func testFollowerRestartsAfterASnapshotReplacedItsLog() throws {
        let nats = try NatsServer()
        let dir = Harness.tempDir("install-restart")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let raftPorts = (0..<3).map { _ in Harness.freePort() }
        let adminPort = Harness.freePort()
        let names = ["n1", "n2", "n3"]
        let peers = (0..<3).map { "\(names[$0])@127.0.0.1:\(raftPorts[$0])" }.joined(separator: ",")
        let arguments = [
            "-bpm", "120", "-max-bpm", "600", "-cluster", "install", "-node-id", "n2", "-raft-bind",
            "127.0.0.1:\(raftPorts[1])",
            "-peers", peers, "-nats", nats.url, "-data-dir", "\(dir)/n2", "-admin-port", "\(adminPort)",
        ]
        let first = try PulseProcess(arguments: arguments, logPath: "\(dir)/n2.log")
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { (try? RawClient(port: raftPorts[1], timeoutMs: 500)) != nil },
            first.log)
        let ids = names.map(PeerList.stableId)
        let peer = try RawClient(port: raftPorts[1], timeoutMs: 2000)
        let entries = (1...3).map { Entry(index: UInt64($0), term: 3, kind: .normal, data: Array("entry \($0)".utf8)) }
        XCTAssertTrue(
            peer.send(bytes: frame(Message(kind: .append, from: ids[0], to: ids[1], term: 5, entries: entries))))
        let state = ClusterState(
            epoch: .init(startBeat: 0, startNs: HostilePeerTests.realtimeNs(), bpm: 120), pending: nil,
            justification: "")
        let snapshot = Snapshot(index: 1, term: 5, data: [UInt8](try JSONEncoder().encode(state)))
        Thread.sleep(forTimeInterval: 0.3)
        XCTAssertTrue(
            peer.send(bytes: frame(Message(kind: .snapshot, from: ids[0], to: ids[1], term: 5, snapshot: snapshot))))
        // The snapshot is persisted (raft/snapshot written) before the node stops.
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) { FileManager.default.fileExists(atPath: "\(dir)/n2/raft/snapshot") },
            first.log)
        Thread.sleep(forTimeInterval: 0.3)
        first.stop()

        let second = try PulseProcess(arguments: arguments, logPath: "\(dir)/n2-restart.log")
        defer { second.stop() }
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { !PulseCluster.adminJSON(port: adminPort, "/health").isEmpty },
            "the node restarts from what it persisted\n\(second.log)")
        XCTAssertTrue(second.process.isRunning, second.log)
        XCTAssertFalse(second.log.contains("refusing to start"), second.log)
        let persisted = try RaftStore(dataDir: "\(dir)/n2").load()
        XCTAssertEqual(persisted.snapshot?.index, 1)
        XCTAssertEqual(persisted.entries, [], "nothing of the replaced log is left on disk")
    }

    private func frame(_ m: Message) -> [UInt8] {
        var payload: [UInt8] = []
        m.encode(into: &payload)
        return HostilePeerTests.rawFrame(payload, sendNs: HostilePeerTests.realtimeNs())
    }
}
