// Fixtures for the tests of Raft's stable storage (RaftStoreTests, DataDirTests).
import Foundation
import Raft
import XCTest

@testable import Pulse

/// Saving through a `RaftStore` synchronously, and building its files' bytes
/// as the store writes them. Conform a test case to use them.
protocol RaftStoreFixtures {}

extension RaftStoreFixtures {
    /// Saves and waits (at most 10 s, asserted) for the store's callback; rethrows its error.
    func save(_ store: RaftStore, hard: HardState?, entries: [Entry], snapshot: Snapshot? = nil) throws {
        let done = DispatchSemaphore(value: 0)
        var failure: Error?
        store.save(hardState: hard, snapshot: snapshot, entries: entries) { error in
            failure = error
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        if let failure { throw failure }
    }

    /// Persists a compaction (`RaftStore.compact`) and waits, like `save`.
    func compact(_ store: RaftStore, _ snapshot: Snapshot) throws {
        let done = DispatchSemaphore(value: 0)
        var failure: Error?
        store.compact(snapshot) { error in
            failure = error
            done.signal()
        }
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        if let failure { throw failure }
    }

    /// Normal entries `range` of `term`, each carrying "entry <index>".
    func entries(_ range: ClosedRange<UInt64>, term: UInt64) -> [Entry] {
        range.map { Entry(index: $0, term: term, kind: .normal, data: Array("entry \($0)".utf8)) }
    }

    /// `raft/snapshot` bytes (header and checksum as the store writes them).
    func snapshotBytes(index: UInt64, term: UInt64, data: [UInt8]) -> [UInt8] {
        var body = [UInt8]()
        RaftStore.put(&body, index)
        RaftStore.put(&body, term)
        body += data
        var file = [UInt8]()
        RaftStore.put(&file, RaftStore.checksum(body))
        return file + body
    }
}
