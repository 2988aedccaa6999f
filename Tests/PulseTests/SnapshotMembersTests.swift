// The Raft snapshot file keeps the voter set once a membership change was
// made (RaftStore: version byte 0x01, then the member list, then the state):
// it round-trips through the store, a file without it parses as before, and
// a malformed voter set refuses to start with the file and the reason.
import Foundation
import PulseCore
import PulsePolicy
import Raft
import XCTest

@testable import Pulse

final class SnapshotMembersTests: XCTestCase {
    private func stateBytes() throws -> [UInt8] {
        let state = ClusterState(
            epoch: .init(startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 120), pending: nil,
            justification: "")
        return [UInt8](try JSONEncoder().encode(state))
    }

    /// A snapshot file as the store writes it, with `middle` between header and state.
    private func file(index: UInt64, term: UInt64, middle: [UInt8], data: [UInt8]) -> [UInt8] {
        var body = [UInt8]()
        RaftStore.put(&body, index)
        RaftStore.put(&body, term)
        body += middle + data
        var out = [UInt8]()
        RaftStore.put(&out, RaftStore.checksum(body))
        return out + body
    }

    private let members = [
        Member(id: 11, context: Array("n1\n127.0.0.1:7001".utf8)),
        Member(id: 22, context: Array("n2\n127.0.0.1:7002".utf8)),
        Member(id: 44, context: []),
    ]

    func testVoterSetSurvivesTheStore() throws {
        let dir = Harness.tempDir("snapmembers")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let data = try stateBytes()
        let snapshot = Snapshot(index: 9, term: 2, data: data, members: members)
        let store = try RaftStore(dataDir: dir)
        let done = DispatchSemaphore(value: 0)
        var failure: Error?
        store.save(hardState: HardState(term: 2, vote: 0, commit: 9), snapshot: snapshot, entries: []) {
            failure = $0
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        XCTAssertNil(failure)
        let loaded = try RaftStore(dataDir: dir).load()
        XCTAssertEqual(loaded.snapshot, snapshot)
        XCTAssertEqual(loaded.snapshot?.members.map(\.id), [11, 22, 44])
        // The byte after the header opens the voter set, not the JSON.
        let raw = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/raft/snapshot")))
        XCTAssertEqual(raw[24], 0x01)
    }

    func testFileWithoutVotersParsesAsBefore() throws {
        let data = try stateBytes()
        let parsed = try RaftStore.parseSnapshot(file(index: 9, term: 2, middle: [], data: data))
        XCTAssertEqual(parsed, Snapshot(index: 9, term: 2, data: data))
        XCTAssertTrue(parsed.members.isEmpty)
    }

    func testMalformedVoterSetIsRefusedWithItsReason() throws {
        let data = try stateBytes()
        let good = [UInt8(0x01)] + Member.encodedList(members)
        XCTAssertEqual(
            try RaftStore.parseSnapshot(file(index: 9, term: 2, middle: good, data: data)).members, members)
        var tooMany: [UInt8] = [0x01, 10]  // 10 voters claimed: over maxVoters
        for id in 1...10 { tooMany += [UInt8(id), 0, 0, 0, 0, 0, 0, 0, 0, 0] }
        var duplicate = [UInt8(0x01)] + Member.encodedList([Member(id: 5)])
        duplicate[1] = 2
        duplicate += [5, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        var hugeContext: [UInt8] = [0x01, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF]  // 65535-byte context
        hugeContext += [UInt8](repeating: 0x41, count: 600)
        let cases: [([UInt8], String)] = [
            ([0x01], "empty list"),
            ([0x01, 0], "zero voters"),
            (tooMany, "ten voters"),
            (duplicate, "duplicate voter"),
            ([0x01, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "voter id 0"),
            ([0x01, 1, 7, 0, 0, 0, 0, 0, 0, 0, 9, 0, 1], "context cut short"),
            (hugeContext, "context over 512 bytes"),
        ]
        for (middle, what) in cases {
            // The voter set at the end of the file, and before a valid state.
            for tail in [[], data] {
                XCTAssertThrowsError(try RaftStore.parseSnapshot(file(index: 9, term: 2, middle: middle, data: tail))) {
                    error in
                    guard let error = error as? DataDirError else { return XCTFail("\(what): \(error)") }
                    XCTAssertEqual(error.file, "raft/snapshot", what)
                    XCTAssertTrue(
                        ["bad_snapshot_members", "bad_snapshot_state"].contains(error.reason), "\(what): \(error)")
                }
            }
        }
        // The store refuses to start on it, naming the file.
        let dir = Harness.tempDir("snapmembers-bad")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/raft", withIntermediateDirectories: true)
        try Data(file(index: 3, term: 1, middle: [0x01, 0], data: data)).write(
            to: URL(fileURLWithPath: dir + "/raft/snapshot"))
        let rejected = RejectedInput()
        XCTAssertThrowsError(try RaftStore(dataDir: dir, rejected: rejected).load()) { error in
            XCTAssertTrue("\(error)".hasPrefix(dir + "/raft/snapshot: "), "\(error)")
            XCTAssertTrue("\(error)".contains("voter set"), "\(error)")
        }
    }
}
