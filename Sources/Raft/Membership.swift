// Membership.swift — owns the voter set of a cluster and its changes at
// runtime: the `Member` value, the `ConfigChange` log entry (its binary
// encoding and its validation) and the pure rules that say whether a change
// is a legal single-server step.
//
// Single-server changes (Raft dissertation §4.1, as etcd does them): one
// voter is added or removed per change, so any majority of the old set and
// any majority of the new one share a node, and no two leaders can be
// elected in one term by disjoint majorities. A node uses the latest
// configuration in its log as soon as it is appended (not when committed);
// when an uncommitted configuration entry is truncated, the node falls back
// to the one before it (`RaftNode.rebuildConfiguration`).
//
// Every configuration entry carries the whole voter set after the change
// (with each member's opaque context, e.g. its network address), not only
// the difference: a node that joins with an empty log learns the voter set
// from the first configuration entry or snapshot it receives, without having
// to know the cluster's bootstrap configuration. The leader checks that a
// proposal differs from its current set by exactly the one node named;
// followers check what they can check on their own (bounded ids, no
// duplicates, never empty, at most `maxVoters`, the named node present after
// an add and absent after a remove) and refuse the append otherwise
// (`MessageRejection.badConfigEntry`).
//
// Entry data (version 1, little-endian):
//   u8 version (=1) | u8 change (1 add voter, 2 remove voter) | u64 node
//   u8 memberCount | per member: u64 id | u16 contextLength | context bytes

/// A voter and the application's context for it (opaque to the core; the
/// service keeps the member's name and Raft address there).
public struct Member: Equatable, Sendable {
    public var id: NodeID
    public var context: [UInt8]

    public init(id: NodeID, context: [UInt8] = []) {
        self.id = id
        self.context = context
    }

    /// Most voters a configuration may hold (and a node accepts from a peer).
    public static let maxVoters = 9
    /// Largest context per member (a name and a `host:port` fit easily).
    public static let maxContextBytes = 512

    /// Why `members` is not a usable voter set, or nil: ids non-zero and
    /// distinct, 1 to `maxVoters` of them, contexts bounded. Pure.
    public static func problem(_ members: [Member]) -> String? {
        if members.isEmpty { return "empty voter set" }
        if members.count > maxVoters { return "more than \(maxVoters) voters" }
        for (k, m) in members.enumerated() {
            if m.id == noNode { return "voter id 0" }
            if m.context.count > maxContextBytes { return "member context too large" }
            for other in members[..<k] where other.id == m.id { return "duplicate voter" }
        }
        return nil
    }

    /// The encoding of a member list (u8 count, then per member u64 id,
    /// u16 context length, context), as configuration entries and snapshot
    /// messages carry it; for the application's snapshot file.
    public static func encodedList(_ members: [Member]) -> [UInt8] {
        var out: [UInt8] = []
        encode(members, into: &out)
        return out
    }

    /// Decodes a member list from the front of `bytes` (any bytes: never
    /// traps): the members and the bytes consumed, or nil when it is cut
    /// short, names more than `maxVoters` or a context over
    /// `maxContextBytes`, or is not a usable voter set (`problem`).
    public static func decodeList(_ bytes: [UInt8]) -> (members: [Member], length: Int)? {
        var r = ByteReader(bytes)
        guard let count = r.read(1), (1...UInt64(maxVoters)).contains(count) else { return nil }
        var members: [Member] = []
        var length = 1
        for _ in 0..<Int(count) {
            guard let id = r.read(8), let contextLength = r.read(2), contextLength <= UInt64(maxContextBytes),
                let context = r.bytes(Int(contextLength))
            else { return nil }
            members.append(Member(id: id, context: context))
            length += 10 + context.count
        }
        guard problem(members) == nil else { return nil }
        return (members, length)
    }

    /// Appends the encoding of a member list (u8 count, then members).
    static func encode(_ members: [Member], into out: inout [UInt8]) {
        precondition(members.count <= 255 && members.allSatisfy { $0.context.count <= Int(UInt16.max) })
        out.append(UInt8(members.count))
        for m in members {
            putLE(m.id, 8, &out)
            putLE(UInt64(m.context.count), 2, &out)
            out.append(contentsOf: m.context)
        }
    }
}

/// A configuration change: one voter added or removed, with the voter set
/// that results (see the file header). Stored as the data of an
/// `EntryKind.config` entry.
public struct ConfigChange: Equatable, Sendable {
    public enum Kind: UInt8, Sendable, Equatable {
        case addVoter = 1
        case removeVoter = 2
    }

    public var kind: Kind
    /// The node added or removed.
    public var node: NodeID
    /// Every voter after the change.
    public var members: [Member]

    public init(kind: Kind, node: NodeID, members: [Member]) {
        self.kind = kind
        self.node = node
        self.members = members
    }

    static let version: UInt8 = 1

    public func encoded() -> [UInt8] {
        var out: [UInt8] = [Self.version, kind.rawValue]
        putLE(node, 8, &out)
        Member.encode(members, into: &out)
        return out
    }

    /// Decodes and checks an entry's data (any bytes: never traps); nil when
    /// it is not a well-formed change (`problem` is not nil, or bad bytes).
    public static func decode(_ bytes: [UInt8]) -> ConfigChange? {
        var r = ByteReader(bytes)
        guard r.read(1) == UInt64(version), let kindRaw = r.read(1), let kind = Kind(rawValue: UInt8(kindRaw)),
            let node = r.read(8), let count = r.read(1), count <= UInt64(Member.maxVoters)
        else { return nil }
        var members: [Member] = []
        for _ in 0..<Int(count) {
            guard let id = r.read(8), let length = r.read(2), length <= UInt64(Member.maxContextBytes),
                let context = r.bytes(Int(length))
            else { return nil }
            members.append(Member(id: id, context: context))
        }
        guard r.atEnd else { return nil }
        let change = ConfigChange(kind: kind, node: node, members: members)
        return change.problem == nil ? change : nil
    }

    /// What a node can check on its own (see the file header), or nil.
    public var problem: String? {
        if node == noNode { return "node id 0" }
        if let p = Member.problem(members) { return p }
        let present = members.contains { $0.id == node }
        switch kind {
        case .addVoter where !present: return "added node missing from the voter set"
        case .removeVoter where present: return "removed node still in the voter set"
        default: return nil
        }
    }

    /// Leader side: whether this is a single-server step from `current`
    /// (the voter ids in force): exactly `node` added or removed.
    public func isSingleStep(from current: [NodeID]) -> Bool {
        let before = Set(current)
        let after = Set(members.map(\.id))
        switch kind {
        case .addVoter: return !before.contains(node) && after == before.union([node])
        case .removeVoter: return before.contains(node) && after == before.subtracting([node])
        }
    }
}

/// Little-endian bytes of the low `width` bytes of `value`.
func putLE(_ value: UInt64, _ width: Int, _ out: inout [UInt8]) {
    var x = value
    for _ in 0..<width {
        out.append(UInt8(truncatingIfNeeded: x))
        x >>= 8
    }
}

/// A bounds-checked little-endian reader over bytes (nil past the end).
struct ByteReader {
    private let bytes: [UInt8]
    private var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var atEnd: Bool { position == bytes.count }

    mutating func read(_ width: Int) -> UInt64? {
        guard width <= 8, bytes.count - position >= width else { return nil }
        var v: UInt64 = 0
        for k in 0..<width { v |= UInt64(bytes[position + k]) << (8 * k) }
        position += width
        return v
    }

    mutating func bytes(_ n: Int) -> [UInt8]? {
        guard n >= 0, bytes.count - position >= n else { return nil }
        defer { position += n }
        return Array(bytes[position..<(position + n)])
    }
}
