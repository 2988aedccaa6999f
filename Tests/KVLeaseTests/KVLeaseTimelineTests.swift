// The KV timeline (Sources/PulsePolicy/KVLeaseTimeline.swift): records
// applied in revision order, the holder's writes with compare-and-set, the
// term-start fence, and untrusted records refused.
import PulseCore
import PulsePolicy
import XCTest

final class KVLeaseTimelineTests: XCTestCase {
    private func flags() throws -> TimelineShape { try TimelineShape(bar: 4, phases: ["beat"]) }
    private let epoch = ClusterCommand.epoch(
        startBeat: 0, startNs: 1_800_000_000_000_000_000, bpm: 120, bar: 4, phases: ["beat"])

    func testEpochThenTempoAppliedInRevisionOrderOnEveryNode() throws {
        var holder = KVLeaseTimeline(flags: try flags())
        var watcher = KVLeaseTimeline(flags: try flags())
        let first = try XCTUnwrap(holder.write(epoch, term: 5))
        XCTAssertEqual(first.lastRevision, 0, "the first record is a create")
        let started = KVTimelineChange.started(TempoEpoch(startBeat: 0, startNs: 1_800_000_000_000_000_000, bpm: 120))
        XCTAssertEqual(holder.apply(first.value, revision: 3), started)
        XCTAssertEqual(watcher.apply(first.value, revision: 3), started)
        XCTAssertTrue(holder.holderReady(term: 5))
        XCTAssertFalse(holder.holderReady(term: 6))

        // A change off a downbeat is placed on the next one, as in Raft mode.
        let tempo = try XCTUnwrap(holder.write(.tempo(atBeat: 9, bpm: 90, justification: "slower"), term: 5))
        XCTAssertEqual(tempo.lastRevision, 3)
        XCTAssertEqual(tempo.applied, .tempo(TempoChange(atBeat: 12, bpm: 90)))
        XCTAssertEqual(holder.apply(tempo.value, revision: 4), .tempo(TempoChange(atBeat: 12, bpm: 90)))
        XCTAssertEqual(watcher.apply(tempo.value, revision: 4), .tempo(TempoChange(atBeat: 12, bpm: 90)))
        XCTAssertEqual(holder.machine, watcher.machine)
        XCTAssertEqual(watcher.machine.timeline?.pending, TempoChange(atBeat: 12, bpm: 90))
        // Replayed or older revisions change nothing.
        XCTAssertEqual(watcher.apply(first.value, revision: 3), .refused("revision behind"))
        XCTAssertEqual(watcher.apply(tempo.value, revision: 4), .refused("old revision"))
        XCTAssertEqual(watcher.machine.timeline?.pending, TempoChange(atBeat: 12, bpm: 90))
    }

    func testTermStartRestampsAndFencesAStaleHoldersWrite() throws {
        var node = KVLeaseTimeline(flags: try flags())
        let first = try XCTUnwrap(node.write(epoch, term: 5))
        _ = node.apply(first.value, revision: 3)
        // The stale holder (term 5) prepares a change on revision 3 ...
        let stale = try XCTUnwrap(node.write(.tempo(atBeat: 8, bpm: 100, justification: ""), term: 5))
        XCTAssertEqual(stale.lastRevision, 3)
        // ... but the new holder (term 9) first re-stamps the record.
        let start = try XCTUnwrap(node.termStart(term: 9))
        XCTAssertEqual(start.lastRevision, 3)
        XCTAssertFalse(node.holderReady(term: 9), "no publishing before the term start is applied")
        XCTAssertEqual(node.apply(start.value, revision: 4), .restamped(term: 9))
        XCTAssertTrue(node.holderReady(term: 9))
        XCTAssertFalse(node.holderReady(term: 5))
        // The stale write compares on revision 3: the key is at 4, so the KV refuses it.
        XCTAssertNotEqual(stale.lastRevision, node.revision)
        XCTAssertNil(KVLeaseTimeline(flags: try flags()).termStart(term: 1), "nothing to re-stamp before the epoch")
    }

    func testUntrustedRecordsAreRefusedAndChangeNothing() throws {
        var node = KVLeaseTimeline(flags: try flags())
        XCTAssertEqual(node.apply(Array("not json".utf8), revision: 1), .refused("bad record"))
        XCTAssertEqual(
            node.apply([UInt8](repeating: 32, count: KVTimelineRecord.maxBytes + 1), revision: 2),
            .refused("bad record"))
        let badBpm = KVTimelineRecord(
            term: 1,
            state: ClusterState(
                epoch: .init(startBeat: 0, startNs: 0, bpm: 0), pending: nil, justification: "", bar: 4,
                phases: ["beat"]))
        XCTAssertEqual(node.apply(badBpm.encoded(), revision: 3), .refused("bad record"))
        XCTAssertNil(node.machine.state)
        XCTAssertEqual(node.revision, 0)
        // Another shape: the node must stop, and adopts nothing.
        var other = KVLeaseTimeline(flags: try TimelineShape(bar: 3, phases: ["beat"]))
        let first = try XCTUnwrap(node.write(epoch, term: 5))
        guard case .shapeMismatch = other.apply(first.value, revision: 4) else {
            return XCTFail("a record of another shape must be a mismatch")
        }
        XCTAssertNil(other.machine.state)
        // A second epoch is no write.
        _ = node.apply(first.value, revision: 4)
        XCTAssertNil(node.write(epoch, term: 5))
    }
}
