// Cluster: Raft's stable storage in `<data-dir>/raft/`.
//
//   hardstate  term, vote, commit            rewritten atomically
//   snapshot   index, term, [voters], state  rewritten atomically
//              (the voter set only once a membership change was made: a
//              version byte 0x01, which cannot open the JSON state, then the
//              member list as Raft encodes it; without it the file is as
//              before, and the voter set is the bootstrap one)
//   log        append-only records           [len u32][sum 8][index u64][term u64][kind u8][data]
//
// Every record and file carries a checksum (the first 8 bytes of SHA-256,
// from swift-crypto). On load every file is validated by a pure parser
// (`parseHardState`, `parseSnapshot`, `scanLog`, `checkConsistency`), and:
// - a torn log tail — a bad record with no intact record after it, as an
//   append cut by a crash leaves — is cut off and counted: Raft only ever
//   acknowledged what was synced, so it was never promised to anyone;
// - a bad record followed by an intact one is corruption of acknowledged
//   entries: the node refuses to start, naming the file and the byte offset
//   (as etcd does on a corrupt WAL), rather than silently losing them;
// - so is a bad record followed by more bytes than one append writes
//   (`maxAppendBytes`: appends are written and synced in chunks of at most
//   that, so a crash tears at most one chunk);
// - the scan's cost is bounded (adversarial review of #9: a file of 0x01
//   bytes claimed 16 MB records at every offset, hours of hashing): records
//   are at most `maxRecordBytes` (an entry's payload is bounded by the core),
//   and looking past a bad record for an intact one hashes at most
//   `hashBudgetPerByte` × the file's size in all; past that the node refuses
//   to start, naming the bad record's offset;
// - a bad hard state or snapshot refuses to start (rather than vote twice,
//   or start a second timeline).
// Writes and fsyncs run on the store's own serial queue, never on the loop
// thread; the caller learns of completion through the loop.
import Crypto
import Foundation
import Glibc
import PulseCore
import PulsePolicy
import Raft

/// What a node persisted, as loaded at start-up.
public struct RaftPersisted {
    public init() {}
    public var hardState = HardState()
    public var snapshot: Snapshot?
    public var entries: [Entry] = []
    /// Bytes cut from a torn log tail at load (0 when clean).
    public var truncatedBytes = 0
}

/// What scanning a Raft log may cost, and what it did: bytes hashed.
public struct LogScanCost: Equatable, Sendable {
    /// Most bytes the scan may hash (checksums); beyond, it refuses.
    public let budget: Int
    /// Bytes hashed so far.
    public var bytesHashed = 0
    public init(budget: Int) { self.budget = budget }
}

/// A Raft log file's bytes, scanned (`RaftStore.scanLog`).
public struct RaftLogScan: Equatable, Sendable {
    /// The intact records, in order (contiguous indices, non-decreasing terms).
    public var entries: [Entry]
    /// Where a torn tail starts (nil: the file ends with a whole record).
    public var tornTailAt: Int?
}

/// Durable Raft state over a `RaftFiles` port. `load`, `persist` and
/// `persistCompaction` are synchronous (the simulator calls them directly);
/// the service calls `save`/`compact`, which run them on the store's own
/// serial queue, never on the loop thread.
public final class RaftStore {
    public let files: RaftFiles
    private let queue = DispatchQueue(label: "pulse.raft.store")
    /// Where refusals and torn tails are counted (nil in tests that do not care).
    private let rejected: RejectedInput?
    /// The stable log as on disk (owned by `queue`).
    private var stable: [Entry] = []
    private var snapshotIndex: UInt64 = 0
    /// The hard state as on disk (owned by `queue`).
    private var persistedHard = HardState()

    /// The store of `<dataDir>/raft` (created when missing).
    convenience init(dataDir: String, rejected: RejectedInput? = nil, sync: DiskSync = .untimed) throws {
        try self.init(files: PosixRaftFiles(dataDir: dataDir, sync: sync), rejected: rejected)
    }

    init(files: RaftFiles, rejected: RejectedInput? = nil) {
        self.files = files
        self.rejected = rejected
    }

    static func checksum(_ bytes: some Sequence<UInt8>) -> UInt64 {
        let digest = SHA256.hash(data: Array(bytes))
        return digest.withUnsafeBytes { raw in raw.loadUnaligned(as: UInt64.self) }
    }

    // MARK: load (start-up, before the loop runs)

    /// Largest log accepted at load (compaction keeps it far smaller).
    static let maxLogBytes = 1 << 30
    /// Largest record payload: index, term, kind and an entry's data, which
    /// the core bounds by `Message.maxPayloadBytes` (the append path never
    /// writes more).
    public static let maxRecordBytes = 17 + Message.maxPayloadBytes
    /// Largest snapshot file: header and the state, bounded like a snapshot message.
    static let maxSnapshotFileBytes =
        24 + 1 + 1 + Member.maxVoters * (10 + Member.maxContextBytes) + Message.maxSnapshotBytes
    /// Appends are written and synced in chunks of at most this (or one
    /// record), so a torn tail — what a crash leaves of the last chunk —
    /// is never longer; a longer run of bad bytes is corruption.
    public static let maxAppendBytes = 4 << 20
    /// Looking past bad records hashes at most this many bytes per byte of
    /// the log file (the intact records themselves are hashed once: 1×).
    public static let hashBudgetPerByte = 4
    /// An index at or above this is absurd (2^62: an entry a nanosecond for
    /// 146 years), refused so that `index + 1` and friends can never overflow.
    public static let absurd: UInt64 = 1 << 62
    /// A term at or above this is absurd (`RaftNode.maxTerm`, 2^63); terms
    /// from 2^62 on are legal, the core reaches them only one step at a time
    /// after a forged message (see `RaftNode.maxTerm`), and must restart there.
    public static let absurdTerm: UInt64 = RaftNode.maxTerm

    /// Loads and validates everything; an unusable file refuses to start with
    /// one line naming it (and the byte offset, for the log).
    /// `bar` (the node's -bar, when known) is what a snapshot's pending
    /// tempo change must fall on, as when the node accepted it from a leader.
    public func load(bar: Int? = nil) throws -> RaftPersisted {
        do {
            return try loadValidated(bar: bar)
        } catch {
            rejected?.record(.dataDir, error.reason)
            throw PulseError.startup("\(files.location)\(error); refusing to start")
        }
    }

    private func loadValidated(bar: Int?) throws(DataDirError) -> RaftPersisted {
        var persisted = RaftPersisted()
        if let bytes = try files.read("hardstate", limit: 1024) {
            persisted.hardState = try Self.parseHardState(bytes)
        }
        if let bytes = try files.read("snapshot", limit: Self.maxSnapshotFileBytes) {
            persisted.snapshot = try Self.parseSnapshot(bytes, bar: bar.map(Int64.init))
        }
        let bytes = try files.read("log", limit: Self.maxLogBytes) ?? []
        let scan = try Self.scanLog(bytes)
        snapshotIndex = persisted.snapshot?.index ?? 0
        var entries = scan.entries.filter { $0.index > snapshotIndex }
        let stale = Self.staleAfterSnapshot(
            entries, snapshot: persisted.snapshot, commit: persisted.hardState.commit,
            termAtSnapshot: scan.entries.first { $0.index == snapshotIndex }?.term)
        if stale > 0 {
            entries.removeFirst(stale)
            rejected?.record(.dataDir, "stale_tail_after_snapshot")
        }
        // Checked before the torn tail is cut: a refusal never changes the files.
        if let torn = scan.tornTailAt, persisted.hardState.commit > (entries.last?.index ?? snapshotIndex) {
            // The commit is written after the entries it covers are synced, so
            // a torn append cannot hold committed entries: this is corruption.
            throw DataDirError(
                file: "raft/log", offset: torn, reason: "corrupt_record",
                detail: "the last record is bad but holds committed entries (commit \(persisted.hardState.commit))")
        }
        try Self.checkConsistency(hardState: persisted.hardState, snapshot: persisted.snapshot, entries: entries)
        if let torn = scan.tornTailAt {
            persisted.truncatedBytes = bytes.count - torn
            rejected?.record(.dataDir, "torn_tail")
        }
        if scan.tornTailAt != nil || stale > 0 {
            do {
                try rewriteLog(entries)
            } catch {
                throw DataDirError(file: "raft/log", reason: "unwritable", detail: "cannot rewrite the log: \(error)")
            }
        }
        stable = entries
        persistedHard = persisted.hardState
        persisted.entries = entries
        return persisted
    }

    /// How many entries at the head of `entries` (those after the snapshot)
    /// are a stale tail that installing the snapshot replaced: all of them,
    /// provided none is committed, when the first has a term below the
    /// snapshot's (no log that holds the snapshot's entry can continue with a
    /// lower term, so the install replaced this log), or when the stored log
    /// holds an entry at the snapshot's index (`termAtSnapshot`) of another
    /// term: the core installs a snapshot only when its log does not match
    /// there, and that entry's term can be higher than the snapshot's
    /// (adversarial review: a tail [S+1 of term X > T] survived). A crashed
    /// compaction leaves the snapshot's own entry there, of the same term,
    /// and its tail stays. Two ways to get such a
    /// tail: data dirs written before the fix of issue #19 (the store dropped
    /// only entries up to the snapshot's index, while the core drops its
    /// whole log when a snapshot does not match it; the core then refused to
    /// start: "entry 2 has a lower term than its predecessor"), and a crash
    /// between writing an installed snapshot and emptying the log (`persist`).
    /// The tail may hold later entries of higher terms too (adversarial
    /// review: [S+1 of a lower term, S+2 of a higher one]); none of it was
    /// part of the node's log after the install, so dropping it loses nothing.
    public static func staleAfterSnapshot(
        _ entries: [Entry], snapshot: Snapshot?, commit: UInt64, termAtSnapshot: UInt64? = nil
    ) -> Int {
        guard let snapshot, let first = entries.first, entries.allSatisfy({ $0.index > commit }) else { return 0 }
        let replaced = first.term < snapshot.term || (termAtSnapshot.map { $0 != snapshot.term } ?? false)
        return replaced ? entries.count : 0
    }

    // MARK: pure parsers (start-up and fuzzing: any bytes, never a trap)

    /// `raft/hardstate`: 32 bytes, checksummed; a term at or above 2^63 is
    /// refused (it would make every restart overflow on `term + 1`).
    public static func parseHardState(_ bytes: [UInt8]) throws(DataDirError) -> HardState {
        let file = "raft/hardstate"
        guard bytes.count == 32 else {
            throw DataDirError(file: file, reason: "bad_length", detail: "is \(bytes.count) bytes, not 32")
        }
        guard checksum(bytes[0..<24]) == u64(bytes, 24) else {
            throw DataDirError(
                file: file, reason: "bad_checksum", detail: "checksum mismatch (it holds this node's vote)")
        }
        let hard = HardState(term: u64(bytes, 0), vote: u64(bytes, 8), commit: u64(bytes, 16))
        guard hard.term < absurdTerm else {
            throw DataDirError(file: file, reason: "term_absurd", detail: "term \(hard.term) is absurd (≥ 2^63)")
        }
        guard hard.commit < absurd else {
            throw DataDirError(file: file, reason: "index_absurd", detail: "commit \(hard.commit) is absurd (≥ 2^62)")
        }
        return hard
    }

    /// Opens the voter set in `raft/snapshot` (a JSON state opens with `{`).
    static let snapshotMembersVersion: UInt8 = 0x01

    /// `raft/snapshot`: checksummed header, the voter set when one was
    /// recorded (`snapshotMembersVersion`; refused as `bad_snapshot_members`
    /// when malformed), (index ≥ 1 below 2^62, term ≥ 1
    /// below 2^63) and a state that decodes to a valid timeline (`ClusterState`):
    /// a node must not start without the timeline it committed, nor — started
    /// with -bootstrap — start a second one. Its timeline shape, if it
    /// stores one, is valid (`DataDirFiles.checkShape`), and a pending change
    /// falls on a downbeat of the stored bar; with no stored shape, of `bar` (as `ClusterNode.snapshotState`
    /// checks before the core adopts a leader's snapshot); without (fuzzing,
    /// tools that do not know the node's flags) that one check is skipped.
    public static func parseSnapshot(_ bytes: [UInt8], bar: Int64? = nil) throws(DataDirError) -> Snapshot {
        let file = "raft/snapshot"
        guard bytes.count >= 24 else {
            throw DataDirError(
                file: file, reason: "bad_length", detail: "is \(bytes.count) bytes, shorter than its header")
        }
        guard checksum(bytes[8...]) == u64(bytes, 0) else {
            throw DataDirError(file: file, reason: "bad_checksum", detail: "checksum mismatch")
        }
        var members: [Member] = []
        var stateStart = 24
        if bytes.count > 24, bytes[24] == snapshotMembersVersion {
            // Bounded by Raft's own limits (at most 9 voters, 512-byte contexts), validated like a peer's.
            guard let list = Member.decodeList(Array(bytes[25...])) else {
                throw DataDirError(
                    file: file, reason: "bad_snapshot_members",
                    detail: "the voter set is cut short, over its bounds, or not a usable voter set")
            }
            members = list.members
            stateStart = 25 + list.length
        }
        let snapshot = Snapshot(
            index: u64(bytes, 8), term: u64(bytes, 16), data: Array(bytes[stateStart...]), members: members)
        guard (1..<absurd).contains(snapshot.index), (1..<absurdTerm).contains(snapshot.term) else {
            throw DataDirError(
                file: file, reason: "index_absurd",
                detail: "index \(snapshot.index) or term \(snapshot.term) is outside 1..<2^62 (2^63 for the term)")
        }
        let state: ClusterState
        do {
            state = try JSONDecoder().decode(ClusterState.self, from: Data(snapshot.data))
        } catch {
            var failure = DataDirFiles.decodingFailure(file: file, error)
            failure.reason = "bad_snapshot_state"
            failure.detail = "the timeline state does not decode: " + failure.detail
            throw failure
        }
        // A snapshot's own shape, when it has one, is what its pending change falls on (§12).
        let storedBar = try DataDirFiles.checkShape(file: file, bar: state.bar, phases: state.phases)
        try DataDirFiles.checkTimeline(
            file: file, startBeat: state.epoch.startBeat, startNs: state.epoch.startNs, bpm: state.epoch.bpm,
            pendingAtBeat: state.pending?.atBeat, pendingBpm: state.pending?.bpm, bar: storedBar.map(Int64.init) ?? bar)
        return snapshot
    }

    /// `raft/log`: records in order. A bad record (short header, length out
    /// of range, running past the end, checksum mismatch, unknown kind) with
    /// no intact record anywhere after it is a torn tail (`tornTailAt`); with
    /// one after it, it is corruption, refused with its offset. Intact
    /// records must have contiguous indices from ≥ 1 below 2^62 and
    /// non-decreasing terms below 2^63. A bad record with more than
    /// `maxAppendBytes` after it is corruption too (no crash tears more).
    /// Cost: at most `hashBudgetPerByte` × the file's size bytes hashed
    /// (`cost` says how many), else refused as corruption at the bad record.
    public static func scanLog(_ bytes: [UInt8]) throws(DataDirError) -> RaftLogScan {
        var cost = LogScanCost(budget: hashBudgetPerByte * bytes.count)
        return try scanLog(bytes, cost: &cost)
    }

    /// `scanLog` with the hashing budget and count in `cost`.
    public static func scanLog(_ bytes: [UInt8], cost: inout LogScanCost) throws(DataDirError) -> RaftLogScan {
        var entries: [Entry] = []
        var offset = 0
        while offset < bytes.count {
            switch record(bytes, at: offset, cost: &cost) {
            case .intact(let entry, let end):
                if let problem = sequenceProblem(entry, after: entries.last) {
                    throw DataDirError(
                        file: "raft/log", offset: offset, reason: "bad_sequence",
                        detail: "record for index \(entry.index) term \(entry.term): \(problem)")
                }
                entries.append(entry)
                offset = end
            case .bad(let problem):
                let after = bytes.count - offset
                guard after <= maxAppendBytes else {
                    throw DataDirError(
                        file: "raft/log", offset: offset, reason: "corrupt_record",
                        detail:
                            "\(problem), with \(after) bytes from there to the end: more than a torn append leaves (\(maxAppendBytes))"
                    )
                }
                let minIndex = (entries.last?.index ?? 0) + 1
                switch firstIntactRecord(bytes, after: offset, minIndex: minIndex, cost: &cost) {
                case .found(let next):
                    throw DataDirError(
                        file: "raft/log", offset: offset, reason: "corrupt_record",
                        detail:
                            "\(problem), and an intact record follows at byte offset \(next): acknowledged entries would be lost"
                    )
                case .overBudget(let at):
                    throw DataDirError(
                        file: "raft/log", offset: offset, reason: "corrupt_record",
                        detail:
                            "\(problem); the search for intact records after it stopped at byte offset \(at), its budget of \(cost.budget) bytes hashed spent"
                    )
                case .none:
                    return RaftLogScan(entries: entries, tornTailAt: offset)
                }
            case .overBudget:
                // The intact records are hashed once each: at most the file's size.
                throw DataDirError(
                    file: "raft/log", offset: offset, reason: "corrupt_record",
                    detail: "the scan's budget of \(cost.budget) bytes hashed is spent")
            }
        }
        return RaftLogScan(entries: entries, tornTailAt: nil)
    }

    /// Checks the files against each other (after entries covered by the
    /// snapshot are dropped): the log continues the snapshot without a gap,
    /// no term beyond the hard state's, and the commit within what is stored.
    public static func checkConsistency(
        hardState: HardState, snapshot: Snapshot?, entries: [Entry]
    ) throws(DataDirError) {
        let snapshotIndex = snapshot?.index ?? 0
        if let first = entries.first, first.index == 0 || first.index - 1 != snapshotIndex {
            throw DataDirError(
                file: "raft/log", reason: "gap",
                detail: "starts at index \(first.index) but the snapshot ends at \(snapshotIndex) (entries are missing)"
            )
        }
        let lastTerm = entries.last?.term ?? snapshot?.term ?? 0
        guard lastTerm <= hardState.term else {
            throw DataDirError(
                file: "raft/hardstate", reason: "term_behind_log",
                detail: "term \(hardState.term) is below the log's last term \(lastTerm)")
        }
        let lastIndex = entries.last?.index ?? snapshotIndex
        guard hardState.commit <= lastIndex else {
            throw DataDirError(
                file: "raft/hardstate", reason: "commit_beyond_log",
                detail:
                    "commit \(hardState.commit) is beyond the last stored entry \(lastIndex) (committed entries are missing)"
            )
        }
    }

    private enum Record {
        case intact(Entry, end: Int)
        case bad(String)
        /// Checking it would hash more than `cost` allows.
        case overBudget
    }

    /// The record at `offset`, decoded and checksum-verified, or why not.
    private static func record(_ bytes: [UInt8], at offset: Int, cost: inout LogScanCost) -> Record {
        guard bytes.count - offset >= 12 else { return .bad("incomplete record header") }
        let length = Int(u32(bytes, offset))
        let start = offset + 12
        guard length >= 17, length <= maxRecordBytes else { return .bad("record length \(length) is out of range") }
        guard length <= bytes.count - start else { return .bad("record runs past the end of the file") }
        guard let kind = EntryKind(rawValue: bytes[start + 16]) else {
            return .bad("unknown record kind \(bytes[start + 16])")
        }
        guard cost.bytesHashed + length <= cost.budget else { return .overBudget }
        cost.bytesHashed += length
        guard checksum(bytes[start..<(start + length)]) == u64(bytes, offset + 4) else {
            return .bad("record checksum mismatch")
        }
        let entry = Entry(
            index: u64(bytes, start), term: u64(bytes, start + 8), kind: kind,
            data: Array(bytes[(start + 17)..<(start + length)]))
        return .intact(entry, end: start + length)
    }

    /// Why `entry` cannot follow `previous` in the log, or nil.
    private static func sequenceProblem(_ entry: Entry, after previous: Entry?) -> String? {
        if entry.index == 0 || entry.index >= absurd || entry.term >= absurdTerm { return "index or term is absurd" }
        guard let previous else { return nil }
        if entry.index != previous.index + 1 { return "follows index \(previous.index)" }
        if entry.term < previous.term { return "term goes back from \(previous.term)" }
        return nil
    }

    private enum Search {
        case found(Int)
        case none
        /// The budget ran out at this candidate offset.
        case overBudget(Int)
    }

    /// The first intact record after `offset` whose index could continue the
    /// log (≥ `minIndex`), none, or where the hashing budget ran out. The
    /// cheap header checks (length, index and term in range) come before the
    /// checksum, so random bytes cost little, and crafted ones the budget.
    private static func firstIntactRecord(
        _ bytes: [UInt8], after offset: Int, minIndex: UInt64, cost: inout LogScanCost
    ) -> Search {
        var candidate = offset + 1
        while bytes.count - candidate >= 12 + 17 {
            let length = Int(u32(bytes, candidate))
            let start = candidate + 12
            if length >= 17, length <= maxRecordBytes, length <= bytes.count - start,
                (minIndex..<absurd).contains(u64(bytes, start)), u64(bytes, start + 8) < absurdTerm
            {
                switch record(bytes, at: candidate, cost: &cost) {
                case .intact: return .found(candidate)
                case .overBudget: return .overBudget(candidate)
                case .bad: break
                }
            }
            candidate += 1
        }
        return .none
    }

    // MARK: save (any thread; runs on the store's queue)

    /// Saves a whole Raft state (a snapshot and a hard state, no entries)
    /// and waits for it, then reads it back with the node's own loader; for
    /// start-up and tools, never the loop: the epoch.json migration and
    /// `pulse restore` (`seed`).
    func saveAndReadBack(hardState: HardState, snapshot: Snapshot, rejected: RejectedInput?) throws {
        dispatchPrecondition(condition: .notOnQueue(queue))  // it waits for the queue
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var failure: Error?
        save(hardState: hardState, snapshot: snapshot, entries: []) { error in
            failure = error
            done.signal()
        }
        done.wait()
        if let failure { throw failure }
        let loaded = try RaftStore(files: files, rejected: rejected).load()
        guard loaded.snapshot == snapshot, loaded.hardState == hardState, loaded.entries.isEmpty else {
            throw PulseError.startup("the Raft state read back differs from what was written")
        }
    }

    /// `pulse restore`: seeds the data dir at `dataDir` (taken under its
    /// lock) with `nodeId` and a Raft state of `snapshot` and `hardState`,
    /// synced and read back.
    public static func seed(dataDir: String, nodeId: String?, hardState: HardState, snapshot: Snapshot) throws {
        let rejected = RejectedInput()
        let dir = try DataDir(path: dataDir, rejected: rejected)
        if let nodeId { try dir.writeAtomically("node_id", Data((nodeId + "\n").utf8)) }
        try RaftStore(dataDir: dataDir, rejected: rejected)
            .saveAndReadBack(hardState: hardState, snapshot: snapshot, rejected: rejected)
    }

    /// Persists a Ready (`persist`) on the store's queue, then calls `done`
    /// there (the caller hops to its loop).
    func save(hardState: HardState?, snapshot: Snapshot?, entries: [Entry], done: @escaping (Error?) -> Void) {
        queue.async { [self] in
            ThreadPlacement.placeCurrentHelperThread()  // fsync off the beat core, at normal priority
            do {
                try persist(hardState: hardState, snapshot: snapshot, entries: entries)
                done(nil)
            } catch {
                done(error)
            }
        }
    }

    /// Persists a compaction (`persistCompaction`) on the store's queue.
    func compact(_ snapshot: Snapshot, done: @escaping (Error?) -> Void) {
        queue.async { [self] in
            ThreadPlacement.placeCurrentHelperThread()
            do {
                try persistCompaction(snapshot)
                done(nil)
            } catch {
                done(error)
            }
        }
    }

    /// Persists a Ready's snapshot, entries and hard state, synced.
    ///
    /// A Ready's snapshot was *installed* from the leader: the core replaced
    /// its whole log with it (RaftLog.restore), so the stored log goes too —
    /// keeping entries after the snapshot's index (as a compaction does)
    /// left a stale tail of an older term that the next start refused
    /// (issue #19). Restartable after any sequence of Readies: the stored
    /// log is always the core's log.
    ///
    /// Crash safety of the order: a new term or vote is written first (with
    /// the commit already on disk), so a crash after the entries of a new
    /// leader are synced never leaves a log term above the stored term (which
    /// the next start would refuse); the commit is written last, so it never
    /// points past the stored entries.
    public func persist(hardState: HardState?, snapshot: Snapshot?, entries: [Entry]) throws {
        if let hardState, hardState.term != persistedHard.term || hardState.vote != persistedHard.vote {
            try writeHardState(HardState(term: hardState.term, vote: hardState.vote, commit: persistedHard.commit))
        }
        if let snapshot {
            try writeSnapshot(snapshot)
            stable.removeAll()
            try rewriteLog(stable)
        }
        if let first = entries.first {
            if let last = stable.last, first.index <= last.index {
                stable.removeAll { $0.index >= first.index }
                stable += entries
                try rewriteLog(stable)
            } else {
                stable += entries
                try append(entries)
            }
        }
        if let hardState, hardState != persistedHard { try writeHardState(hardState) }
    }

    /// Persists a snapshot this node took of its own applied state
    /// (`RaftNode.compact`): entries after it stay.
    public func persistCompaction(_ snapshot: Snapshot) throws {
        guard snapshot.index > snapshotIndex else { return }
        try writeSnapshot(snapshot)
        stable.removeAll { $0.index <= snapshot.index }
        try rewriteLog(stable)
    }

    private func writeSnapshot(_ snapshot: Snapshot) throws {
        var bytes = [UInt8]()
        Self.put(&bytes, snapshot.index)
        Self.put(&bytes, snapshot.term)
        if !snapshot.members.isEmpty {
            bytes.append(Self.snapshotMembersVersion)
            bytes += Member.encodedList(snapshot.members)
        }
        bytes += snapshot.data
        var file = [UInt8]()
        Self.put(&file, Self.checksum(bytes))
        file += bytes
        try files.replace("snapshot", with: file)
        snapshotIndex = snapshot.index
    }

    private func writeHardState(_ hardState: HardState) throws {
        var bytes = [UInt8]()
        Self.put(&bytes, hardState.term)
        Self.put(&bytes, hardState.vote)
        Self.put(&bytes, hardState.commit)
        Self.put(&bytes, Self.checksum(bytes))
        try files.replace("hardstate", with: bytes)
        persistedHard = hardState
    }

    private func record(_ entry: Entry) -> [UInt8] {
        var payload = [UInt8]()
        Self.put(&payload, entry.index)
        Self.put(&payload, entry.term)
        payload.append(entry.kind.rawValue)
        payload += entry.data
        var out = [UInt8]()
        var length = UInt32(payload.count).littleEndian
        withUnsafeBytes(of: &length) { out += $0 }
        Self.put(&out, Self.checksum(payload))
        return out + payload
    }

    /// Appends records in chunks of at most `maxAppendBytes`, each synced
    /// before the next is written: a crash tears at most one chunk, which is
    /// what lets `scanLog` call a longer bad run corruption.
    private func append(_ entries: [Entry]) throws {
        var chunk: [UInt8] = []
        for entry in entries {
            let bytes = record(entry)
            if chunk.count + bytes.count > Self.maxAppendBytes && !chunk.isEmpty {
                try files.append("log", chunk)
                chunk.removeAll(keepingCapacity: true)
            }
            chunk += bytes
        }
        if !chunk.isEmpty { try files.append("log", chunk) }
    }

    private func rewriteLog(_ entries: [Entry]) throws {
        try files.replace("log", with: entries.flatMap(record))
    }

    static func put(_ out: inout [UInt8], _ value: UInt64) {
        var little = value.littleEndian
        withUnsafeBytes(of: &little) { out += $0 }
    }

    static func u64(_ bytes: some Collection<UInt8>, _ offset: Int) -> UInt64 {
        var value: UInt64 = 0
        var i = bytes.index(bytes.startIndex, offsetBy: offset)
        for shift in stride(from: 0, to: 64, by: 8) {
            value |= UInt64(bytes[i]) << UInt64(shift)
            i = bytes.index(after: i)
        }
        return value
    }

    static func u32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16
            | UInt32(bytes[offset + 3]) << 24
    }
}
