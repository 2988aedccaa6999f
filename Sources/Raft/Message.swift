// Message.swift — the messages Raft nodes exchange and their stable binary
// encoding.
//
// Wire format (version 1, all integers little-endian, fixed width):
//   u8 version (=1) | u8 kind | u8 flags (bit0 reject, bit1 transfer, bit2 snapshot,
//                                        bit3 snapshot carries its voter set)
//   u64 from | u64 to | u64 term | u64 logTerm | u64 index | u64 commit
//   u64 rejectHint | u64 leaseTick
//   u32 entryCount, then per entry: u64 index | u64 term | u8 kind | u32 length | bytes
//   if flag bit2: u64 snapshotIndex | u64 snapshotTerm | u32 length | bytes
//   if flag bit3: u8 memberCount | per member: u64 id | u16 length | context
//   (bit3 is set only when the snapshot's member list is not empty, so a
//   snapshot without one is encoded exactly as before membership changes)
// Every count and length is checked against the bytes that remain and against
// a hard limit before anything is allocated; trailing bytes are an error. A
// malformed frame throws `MessageDecodingError`, it never traps.

/// The kinds of messages (the numbering is part of the wire format).
public enum MessageKind: UInt8, Sendable, Equatable, CaseIterable {
    /// Leader → follower: entries after (`index`, `logTerm`), leader's `commit`.
    case append = 1
    /// Follower → leader: `index` is the last matching index, or with `reject`
    /// the rejected `index` plus a conflict hint (`rejectHint`, `logTerm`).
    case appendResponse = 2
    /// Candidate → voter: vote for me in `term`; my last log is (`index`, `logTerm`).
    case vote = 3
    case voteResponse = 4
    /// Pre-candidate → voter: would you vote for me in `term` (not yet raised)?
    case preVote = 5
    case preVoteResponse = 6
    /// Leader → follower: I am alive; you may commit up to `commit`.
    case heartbeat = 7
    case heartbeatResponse = 8
    /// Leader → lagging follower: install `snapshot`.
    case snapshot = 9
    /// Leader → transfer target: campaign now, skipping pre-vote and stickiness.
    case timeoutNow = 10
}

/// One Raft message. Fields that a kind does not use are zero.
public struct Message: Equatable, Sendable {
    public var kind: MessageKind
    public var from: NodeID
    public var to: NodeID
    public var term: UInt64
    public var logTerm: UInt64
    public var index: UInt64
    public var commit: UInt64
    public var entries: [Entry]
    public var reject: Bool
    public var rejectHint: UInt64
    /// The leader's tick count + 1 when it sent an append/heartbeat/snapshot; the
    /// follower echoes it in its response so the leader can date its lease.
    public var leaseTick: UInt64
    /// A vote request that is part of a leadership transfer.
    public var transfer: Bool
    public var snapshot: Snapshot?

    public init(
        kind: MessageKind, from: NodeID, to: NodeID, term: UInt64, logTerm: UInt64 = 0,
        index: UInt64 = 0,
        commit: UInt64 = 0, entries: [Entry] = [], reject: Bool = false, rejectHint: UInt64 = 0,
        leaseTick: UInt64 = 0, transfer: Bool = false, snapshot: Snapshot? = nil
    ) {
        self.kind = kind
        self.from = from
        self.to = to
        self.term = term
        self.logTerm = logTerm
        self.index = index
        self.commit = commit
        self.entries = entries
        self.reject = reject
        self.rejectHint = rejectHint
        self.leaseTick = leaseTick
        self.transfer = transfer
        self.snapshot = snapshot
    }

    /// Wire format version written by `encode`.
    public static let version: UInt8 = 1
    /// Limits enforced by the decoder.
    public static let maxEntries = 4096
    public static let maxPayloadBytes = 1 << 20
    public static let maxSnapshotBytes = 64 << 20
    static let headerBytes = 3 + 8 * 8 + 4
    static let entryHeaderBytes = 8 + 8 + 1 + 4

    /// Appends the encoding of `self` to `out`.
    public func encode(into out: inout [UInt8]) {
        out.append(Message.version)
        out.append(kind.rawValue)
        var flags: UInt8 = 0
        if reject { flags |= 1 }
        if transfer { flags |= 2 }
        if snapshot != nil { flags |= 4 }
        if let s = snapshot, !s.members.isEmpty { flags |= 8 }
        out.append(flags)
        for v in [from, to, term, logTerm, index, commit, rejectHint, leaseTick] { put64(v, &out) }
        precondition(entries.count <= Message.maxEntries, "raft: too many entries in one message")
        put32(UInt32(entries.count), &out)
        for e in entries {
            precondition(e.data.count <= Message.maxPayloadBytes, "raft: entry payload too large")
            put64(e.index, &out)
            put64(e.term, &out)
            out.append(e.kind.rawValue)
            put32(UInt32(e.data.count), &out)
            out.append(contentsOf: e.data)
        }
        if let s = snapshot {
            precondition(s.data.count <= Message.maxSnapshotBytes, "raft: snapshot too large")
            put64(s.index, &out)
            put64(s.term, &out)
            put32(UInt32(s.data.count), &out)
            out.append(contentsOf: s.data)
            if !s.members.isEmpty { Member.encode(s.members, into: &out) }
        }
    }

    /// The encoding of `self` as a fresh array.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(
            Message.headerBytes + entries.reduce(0) { $0 + Message.entryHeaderBytes + $1.data.count })
        encode(into: &out)
        return out
    }

    /// Decodes exactly one message from `bytes`; throws on any malformed input.
    public static func decode(_ bytes: ArraySlice<UInt8>) throws(MessageDecodingError) -> Message {
        var r = Reader(bytes: bytes)
        let version = try r.u8()
        guard version == Message.version else { throw .unsupportedVersion(version) }
        let kindRaw = try r.u8()
        guard let kind = MessageKind(rawValue: kindRaw) else { throw .unknownKind(kindRaw) }
        let flags = try r.u8()
        guard flags & ~15 == 0, flags & 8 == 0 || flags & 4 != 0 else { throw .invalidField("flags") }
        let from = try r.u64()
        let to = try r.u64()
        let term = try r.u64()
        let logTerm = try r.u64()
        let index = try r.u64()
        let commit = try r.u64()
        let rejectHint = try r.u64()
        let leaseTick = try r.u64()
        let count = Int(try r.u32())
        guard count <= Message.maxEntries else { throw .limitExceeded("entry count") }
        guard count * Message.entryHeaderBytes <= r.remaining else { throw .truncated }
        var entries: [Entry] = []
        entries.reserveCapacity(count)
        for _ in 0..<count {
            let eIndex = try r.u64()
            let eTerm = try r.u64()
            let eKindRaw = try r.u8()
            guard let eKind = EntryKind(rawValue: eKindRaw) else { throw .invalidField("entry kind") }
            let length = Int(try r.u32())
            guard length <= Message.maxPayloadBytes else { throw .limitExceeded("entry payload") }
            let data = try r.bytes(length)
            entries.append(Entry(index: eIndex, term: eTerm, kind: eKind, data: data))
        }
        var snapshot: Snapshot? = nil
        if flags & 4 != 0 {
            let sIndex = try r.u64()
            let sTerm = try r.u64()
            let length = Int(try r.u32())
            guard length <= Message.maxSnapshotBytes else { throw .limitExceeded("snapshot data") }
            let data = try r.bytes(length)
            var members: [Member] = []
            if flags & 8 != 0 {
                let memberCount = Int(try r.u8())
                guard (1...Member.maxVoters).contains(memberCount) else { throw .limitExceeded("snapshot members") }
                for _ in 0..<memberCount {
                    let id = try r.u64()
                    let contextLength = Int(try r.u16())
                    guard contextLength <= Member.maxContextBytes else { throw .limitExceeded("member context") }
                    members.append(Member(id: id, context: try r.bytes(contextLength)))
                }
            }
            snapshot = Snapshot(index: sIndex, term: sTerm, data: data, members: members)
        }
        guard r.remaining == 0 else { throw .trailingBytes(r.remaining) }
        let m = Message(
            kind: kind, from: from, to: to, term: term, logTerm: logTerm, index: index, commit: commit,
            entries: entries, reject: flags & 1 != 0, rejectHint: rejectHint, leaseTick: leaseTick,
            transfer: flags & 2 != 0, snapshot: snapshot)
        if let problem = m.structuralProblem() { throw .invalidField(problem) }
        return m
    }

    /// Checks that do not depend on a node's state; `nil` when well-formed.
    /// `RaftNode.step` drops messages that fail them, so a peer cannot make the
    /// core trap.
    public func structuralProblem() -> String? {
        if from == noNode || to == noNode { return "node id 0" }
        if from == to { return "message to self" }
        if !entries.isEmpty && kind != .append { return "entries on a non-append message" }
        if (snapshot != nil) != (kind == .snapshot) { return "snapshot presence" }
        if transfer && kind != .vote { return "transfer flag on a non-vote message" }
        switch kind {
        case .append:
            var previousTerm = logTerm
            for (k, e) in entries.enumerated() {
                let (expected, overflow) = index.addingReportingOverflow(UInt64(k) + 1)
                if overflow || e.index != expected { return "entry indexes not consecutive after index" }
                if e.term < previousTerm || e.term > term { return "entry terms out of order" }
                if e.data.count > Message.maxPayloadBytes { return "entry payload too large" }
                previousTerm = e.term
            }
            if logTerm > term { return "logTerm above term" }
        case .snapshot:
            if let s = snapshot, s.index == 0 || s.term == 0 || s.term > term {
                return "snapshot position"
            }
        case .vote, .preVote:
            if term == 0 { return "vote request for term 0" }
        default:
            break
        }
        return nil
    }
}

/// Why a frame could not be decoded.
public enum MessageDecodingError: Error, Equatable, Sendable {
    case truncated
    case unsupportedVersion(UInt8)
    case unknownKind(UInt8)
    case invalidField(String)
    case limitExceeded(String)
    case trailingBytes(Int)
}

private func put64(_ v: UInt64, _ out: inout [UInt8]) {
    var x = v
    for _ in 0..<8 {
        out.append(UInt8(truncatingIfNeeded: x))
        x >>= 8
    }
}

private func put32(_ v: UInt32, _ out: inout [UInt8]) {
    var x = v
    for _ in 0..<4 {
        out.append(UInt8(truncatingIfNeeded: x))
        x >>= 8
    }
}

/// Bounds-checked little-endian reader over a slice.
private struct Reader {
    let bytes: ArraySlice<UInt8>
    var position: Int

    init(bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        position = bytes.startIndex
    }

    var remaining: Int { bytes.endIndex - position }

    mutating func u8() throws(MessageDecodingError) -> UInt8 {
        guard remaining >= 1 else { throw .truncated }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func u16() throws(MessageDecodingError) -> UInt16 {
        guard remaining >= 2 else { throw .truncated }
        defer { position += 2 }
        return UInt16(bytes[position]) | UInt16(bytes[position + 1]) << 8
    }

    mutating func u32() throws(MessageDecodingError) -> UInt32 {
        guard remaining >= 4 else { throw .truncated }
        var v: UInt32 = 0
        for k in 0..<4 { v |= UInt32(bytes[position + k]) << (8 * k) }
        position += 4
        return v
    }

    mutating func u64() throws(MessageDecodingError) -> UInt64 {
        guard remaining >= 8 else { throw .truncated }
        var v: UInt64 = 0
        for k in 0..<8 { v |= UInt64(bytes[position + k]) << (8 * k) }
        position += 8
        return v
    }

    mutating func bytes(_ n: Int) throws(MessageDecodingError) -> [UInt8] {
        guard n >= 0, remaining >= n else { throw .truncated }
        defer { position += n }
        return Array(bytes[position..<(position + n)])
    }
}
