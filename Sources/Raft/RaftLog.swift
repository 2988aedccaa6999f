// RaftLog.swift — the in-memory replicated log of one node: the snapshot it
// starts from, the entries after it, the commit index, and which entries have
// been handed to the caller for persistence and for application.
//
// Indexes: `snapshot.index` is the last compacted index (0 for a fresh log);
// `entries[k].index == snapshot.index + 1 + k`. Committed entries are never
// truncated (asserted).

struct RaftLog {
    private(set) var snapshot: Snapshot
    private(set) var entries: [Entry]
    private(set) var committed: UInt64
    /// Highest index handed to the caller for application (via a Ready).
    var applying: UInt64
    /// Highest index the caller has applied (acknowledged by `advance`).
    var applied: UInt64
    /// First index not yet handed to the caller for persistence.
    private(set) var unstableFrom: UInt64
    /// A snapshot received from the leader that the caller must persist and apply.
    var snapshotPending: Bool

    /// A log restored from stable storage: everything in it is already persisted.
    init(snapshot: Snapshot, entries: [Entry], committed: UInt64) {
        self.snapshot = snapshot
        self.entries = entries
        self.committed = committed
        applying = snapshot.index
        applied = snapshot.index
        unstableFrom = snapshot.index + 1 + UInt64(entries.count)
        snapshotPending = false
        checkInvariants()
    }

    var firstIndex: UInt64 { snapshot.index + 1 }
    var lastIndex: UInt64 { snapshot.index + UInt64(entries.count) }
    var lastTerm: UInt64 { entries.last?.term ?? snapshot.term }

    /// The term of the entry at `index`, or nil if compacted or beyond the end.
    func term(at index: UInt64) -> UInt64? {
        if index == snapshot.index { return snapshot.term }
        if index < snapshot.index || index > lastIndex { return nil }
        return entries[Int(index - snapshot.index - 1)].term
    }

    func matchTerm(_ index: UInt64, _ term: UInt64) -> Bool { self.term(at: index) == term }

    /// Raft §5.4.1: is a log ending at (`index`, `term`) at least as up-to-date as ours?
    func isUpToDate(lastIndex index: UInt64, lastTerm term: UInt64) -> Bool {
        term > lastTerm || (term == lastTerm && index >= lastIndex)
    }

    /// Entries in `lo..<hi`, at most `limit` of them; `lo` must not be compacted.
    func slice(_ lo: UInt64, _ hi: UInt64, limit: Int = Int.max) -> [Entry] {
        precondition(
            lo >= firstIndex && lo <= hi && hi <= lastIndex + 1,
            "raft: slice \(lo)..<\(hi) out of \(firstIndex)...\(lastIndex)")
        let start = Int(lo - firstIndex)
        let end = start + min(Int(hi - lo), limit)
        return Array(entries[start..<end])
    }

    /// The first entry of `incoming` whose term disagrees with ours or that is
    /// beyond our end; 0 when all are present.
    func findConflict(_ incoming: [Entry]) -> UInt64 {
        for e in incoming where !matchTerm(e.index, e.term) { return e.index }
        return 0
    }

    /// The largest index `<= index` whose term is `<= term` (etcd's fast
    /// backtracking hint), with that term (0 if compacted).
    func findConflictByTerm(_ index: UInt64, _ term: UInt64) -> (index: UInt64, term: UInt64) {
        var i = min(index, lastIndex)
        while true {
            guard let t = self.term(at: i) else { return (i, 0) }
            if t <= term { return (i, t) }
            i -= 1  // t > term >= 0 means i > 0, since term(0) == 0.
        }
    }

    /// Follower side of AppendEntries: if our log has (`prevIndex`, `prevTerm`),
    /// appends `incoming` (truncating a conflicting suffix), commits up to
    /// `leaderCommit` bounded by the last new index, and returns that index.
    mutating func maybeAppend(
        prevIndex: UInt64, prevTerm: UInt64, leaderCommit: UInt64, _ incoming: [Entry]
    ) -> UInt64? {
        guard matchTerm(prevIndex, prevTerm) else { return nil }
        let lastNew = prevIndex + UInt64(incoming.count)
        let conflict = findConflict(incoming)
        if conflict != 0 {
            precondition(
                conflict > committed,
                "raft: entry \(conflict) conflicts with committed entry (commit \(committed))")
            append(Array(incoming[Int(conflict - prevIndex - 1)...]))
        }
        commit(to: min(leaderCommit, lastNew))
        return lastNew
    }

    /// Appends `incoming` (consecutive), truncating our entries from its first index.
    mutating func append(_ incoming: [Entry]) {
        guard let first = incoming.first else { return }
        precondition(
            first.index > committed,
            "raft: truncating committed entries at \(first.index) (commit \(committed))")
        precondition(
            first.index >= firstIndex && first.index <= lastIndex + 1,
            "raft: append at \(first.index) leaves a gap")
        entries.removeLast(Int(lastIndex + 1 - first.index))
        for e in incoming {
            precondition(
                e.index == lastIndex + 1 && e.term >= lastTerm, "raft: appended entries out of order")
            entries.append(e)
        }
        unstableFrom = min(unstableFrom, first.index)
    }

    mutating func commit(to index: UInt64) {
        guard index > committed else { return }
        precondition(index <= lastIndex, "raft: commit \(index) beyond last index \(lastIndex)")
        committed = index
    }

    /// Replaces the whole log by `s` (a snapshot from the leader beyond our commit).
    mutating func restore(_ s: Snapshot) {
        precondition(s.index > committed)
        snapshot = s
        entries = []
        committed = s.index
        applying = s.index
        unstableFrom = s.index + 1
        snapshotPending = true
    }

    /// Discards entries up to `index` (already applied), keeping `data` as the
    /// snapshot and `members` as the voter set in force at `index`.
    mutating func compact(upTo index: UInt64, data: [UInt8], members: [Member]) {
        precondition(index <= applied, "raft: compacting \(index) beyond applied \(applied)")
        precondition(index < unstableFrom, "raft: compacting unpersisted entries")
        guard index > snapshot.index else { return }
        let t = term(at: index)!
        entries.removeFirst(Int(index - snapshot.index))
        snapshot = Snapshot(index: index, term: t, data: data, members: members)
    }

    /// Hands the unpersisted entries to the caller.
    mutating func takeUnstable() -> [Entry] {
        guard unstableFrom <= lastIndex else { return [] }
        let out = slice(unstableFrom, lastIndex + 1)
        unstableFrom = lastIndex + 1
        return out
    }

    var hasUnstable: Bool { unstableFrom <= lastIndex }

    func checkInvariants() {
        precondition(
            committed >= snapshot.index && committed <= lastIndex,
            "raft: commit \(committed) outside log \(snapshot.index)...\(lastIndex)")
        precondition(
            applied <= applying && applying <= committed && applied >= snapshot.index || snapshotPending)
        var expected = snapshot.index + 1
        var t = snapshot.term
        for e in entries {
            precondition(
                e.index == expected && e.term >= t, "raft: log entries out of order at \(e.index)")
            expected += 1
            t = e.term
        }
    }
}
