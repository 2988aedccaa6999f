// LeadershipLogTests.swift — the service's node (ClusterNode over a real
// EventLoop, the real RaftStore on a simulated disk, a recording link and a
// clock the test moves) logs its Raft role as it is: a pre-candidate is no
// follower, and a lone voter leads from `start` on (ClusterShell.start, the
// call the simulator's boot makes too).
import Foundation
import Logging
import PulseCore
import PulsePolicy
import Raft
import XCTest

@testable import Pulse

/// The messages logged through it, in order (loop thread only).
final class LoggedLines: @unchecked Sendable {
    var messages: [String] = []
}

struct CapturingLogHandler: LogHandler {
    let lines: LoggedLines
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) { lines.messages.append("\(event.message)") }
}

final class LeadershipLogTests: XCTestCase {
    private var monoNs: Int64 = 1_000_000_000
    private let lines = LoggedLines()

    private func node(_ peers: PeerList, loop: EventLoop) throws -> ClusterNode {
        let logger = Logger(label: "leadership-log") { [lines] _ in CapturingLogHandler(lines: lines) }
        let clock = ShellClock(monoNs: { [unowned self] in monoNs }, wallNs: { [unowned self] in monoNs })
        return try ClusterNode(
            peers: peers, timing: ClusterTiming(), store: RaftStore(files: SimFiles(seed: 7)), dataDir: "sim",
            seed: 11, clock: clock, bootstrapBpm: 120, shape: try TimelineShape(bar: 4, phases: ["beat"]),
            loop: loop, rejected: RejectedInput(), logger: logger, makeLink: { _, _ in RecordingLink() })
    }

    /// Turns the loop until the node's store completions reach `count` (at most 5 s).
    private func awaitSaves(_ node: ClusterNode, _ count: Int, _ loop: EventLoop) {
        let deadline = Date().addingTimeInterval(5)
        while node.completedSaves < count && Date() < deadline { loop.turn(timeoutNs: 1_000_000) }
    }

    func testAPreCandidateIsLoggedAsOneNotAsAFollower() throws {
        let loop = try EventLoop()
        loop.bindToCurrentThread()
        let peers = PeerList(
            peers: (1...3).map { Peer(name: "n\($0)", host: "127.0.0.1", port: Int($0), raftId: $0, hasId: true) },
            me: Peer(name: "n1", host: "127.0.0.1", port: 1, raftId: 1, hasId: true), bindHost: "127.0.0.1",
            bindPort: 1)
        let node = try node(peers, loop: loop)
        node.shell.start()
        // Past the longest election timeout (6 + 3 ticks): it asks for pre-votes nobody answers.
        for _ in 0..<12 {
            monoNs += ClusterTiming().tickNs
            node.shell.tick()
            loop.turn(timeoutNs: 0)
        }
        XCTAssertFalse(node.isLeader)
        XCTAssertTrue(lines.messages.contains("raft: pre-candidate"), "\(lines.messages)")
        XCTAssertFalse(
            lines.messages.contains("raft: follower"), "no follower line without a leader: \(lines.messages)")
    }

    func testALoneVoterLeadsFromStartAndSaysSo() throws {
        let loop = try EventLoop()
        loop.bindToCurrentThread()
        let node = try node(PeerList.alone(nodeId: "solo"), loop: loop)
        XCTAssertFalse(node.isLeader)
        node.shell.start()  // no tick, no election timeout: the campaign is at once
        awaitSaves(node, 1, loop)
        XCTAssertTrue(node.isLeader, "\(lines.messages)")
        XCTAssertEqual(node.term, 1)
        XCTAssertEqual(lines.messages.filter { $0.hasPrefix("raft: ") && !$0.contains("voter set") }, ["raft: leader"])
    }
}
