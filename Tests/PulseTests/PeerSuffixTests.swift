// Publishers on the beat subject are told apart by their HLC suffix (the last
// 4 characters of the node id): a -peers set whose ids share it is refused at
// start-up with one line and exit status 2; the echo policy's publishers come
// from the same list.
import Foundation
import PulseCore
import XCTest

@testable import Pulse

final class PeerSuffixTests: XCTestCase {
    func testIdsSharingTheirLastFourCharactersAreRefused() {
        let peers = ["pulse-east-1@127.0.0.1:7001", "pulse-west-1@127.0.0.1:7002", "n3@127.0.0.1:7003"]
        XCTAssertThrowsError(
            try PeerList.parse(peers: peers, nodeId: "n3", raftBind: "127.0.0.1:7003")
        ) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("pulse-east-1") && text.contains("pulse-west-1") && text.contains("st-1"), text)
            XCTAssertFalse(text.contains("\n"), text)
        }
        // Also when this node's own id (not listed with an id) collides with a peer's.
        XCTAssertThrowsError(
            try PeerList.parse(
                peers: ["node-a1@127.0.0.1:7001", "127.0.0.1:7002"], nodeId: "home-a1", raftBind: "127.0.0.1:7002"))
        // Distinct suffixes are fine.
        XCTAssertNoThrow(
            try PeerList.parse(
                peers: ["pulse-east-1@127.0.0.1:7001", "pulse-east-2@127.0.0.1:7002"], nodeId: "pulse-east-1",
                raftBind: "127.0.0.1:7001"))
    }

    func testTheNodeIdMustMatchTheIdPeersKnowItBy() {
        XCTAssertThrowsError(
            try PeerList.parse(
                peers: ["n1@127.0.0.1:7001", "n2@127.0.0.1:7002"], nodeId: "pulse-abcdef", raftBind: "127.0.0.1:7001")
        ) { error in
            XCTAssertTrue("\(error)".contains("-node-id n1"), "\(error)")
        }
    }

    func testPublishersComeFromThePeerIds() throws {
        let named = try PeerList.parse(
            peers: ["n1@127.0.0.1:7001", "n2@127.0.0.1:7002", "node-three@127.0.0.1:7003"], nodeId: "n1",
            raftBind: "127.0.0.1:7001")
        XCTAssertEqual(named.publishers(nodeId: "n1"), .known(["n1", "n2", "hree"]))
        // A peer listed without an id cannot be recognised by its suffix: any suffix is allowed.
        let anonymous = try PeerList.parse(
            peers: ["n1@127.0.0.1:7001", "127.0.0.1:7002"], nodeId: "n1", raftBind: "127.0.0.1:7001")
        XCTAssertEqual(anonymous.publishers(nodeId: "n1"), .any)
        // This node without an id is known by its own node id.
        let me = try PeerList.parse(
            peers: ["n1@127.0.0.1:7001", "127.0.0.1:7002"], nodeId: "pulse-abcdef", raftBind: "127.0.0.1:7002")
        XCTAssertEqual(me.publishers(nodeId: "pulse-abcdef"), .known(["n1", "cdef"]))
    }

    func testBinaryRefusesCollidingPeersWithExitTwo() throws {
        let dir = Harness.tempDir("suffix")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let result = try runPulse([
            "-bootstrap", "-node-id", "pulse-east-1", "-raft-bind", "127.0.0.1:7001", "-peers",
            "pulse-east-1@127.0.0.1:7001,pulse-west-1@127.0.0.1:7002", "-data-dir", dir, "-admin-port", "0",
            "-nats", "nats://127.0.0.1:1",
        ])
        XCTAssertEqual(result.status, 2, result.stderr)
        XCTAssertEqual(result.stderr.split(separator: "\n").count, 1, result.stderr)
        XCTAssertTrue(result.stderr.hasPrefix("pulse: error: -peers: node ids"), result.stderr)
    }
}
