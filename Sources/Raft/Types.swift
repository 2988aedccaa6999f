// Types.swift — the value types of the Raft core: ids, log entries, hard and
// soft state, snapshots, configuration, and the seeded random source.
//
// Nothing here does I/O. Every value is plain data so the caller can persist
// it, send it and compare it.

/// A node id. `0` means "none" and is never a valid member id.
public typealias NodeID = UInt64

/// The id meaning "no node" (no vote, no known leader).
public let noNode: NodeID = 0

/// What a log entry carries, so the service can tell its own records apart.
/// The core never interprets payloads; `noop` entries are appended by a new
/// leader (Raft §5.4.2 needs an entry of the current term to commit).
public enum EntryKind: UInt8, Sendable, Equatable {
    case normal = 0
    case noop = 1
    case config = 2
}

/// One log entry: position (index, term), kind and an opaque payload.
public struct Entry: Equatable, Sendable {
    public var index: UInt64
    public var term: UInt64
    public var kind: EntryKind
    public var data: [UInt8]

    public init(index: UInt64, term: UInt64, kind: EntryKind = .normal, data: [UInt8] = []) {
        self.index = index
        self.term = term
        self.kind = kind
        self.data = data
    }
}

/// State that must be on stable storage before any message of the same
/// `Ready` is sent: current term, vote in that term, commit index.
public struct HardState: Equatable, Sendable {
    public var term: UInt64
    public var vote: NodeID
    public var commit: UInt64

    public init(term: UInt64 = 0, vote: NodeID = noNode, commit: UInt64 = 0) {
        self.term = term
        self.vote = vote
        self.commit = commit
    }
}

/// A node's role. Transitions: follower → preCandidate → candidate → leader,
/// any → follower.
public enum Role: UInt8, Sendable, Equatable {
    case follower = 0
    case preCandidate = 1
    case candidate = 2
    case leader = 3
}

/// Volatile state the service wants to observe (not persisted).
public struct SoftState: Equatable, Sendable {
    /// The leader this node knows of in its current term, or `noNode`.
    public var leader: NodeID
    public var role: Role

    public init(leader: NodeID, role: Role) {
        self.leader = leader
        self.role = role
    }
}

/// A compacted log prefix: every entry up to `index` (of term `term`) is
/// replaced by the application's state `data`, and the voter set in force at
/// `index` by `members` (empty: the bootstrap configuration, `Config.voters`,
/// as in snapshots written before membership changes existed).
public struct Snapshot: Equatable, Sendable {
    public var index: UInt64
    public var term: UInt64
    public var data: [UInt8]
    public var members: [Member]

    public init(index: UInt64, term: UInt64, data: [UInt8], members: [Member] = []) {
        self.index = index
        self.term = term
        self.data = data
        self.members = members
    }

    /// The empty snapshot every log starts from (index 0, term 0).
    public static let empty = Snapshot(index: 0, term: 0, data: [])
}

/// Static configuration of a node.
public struct Config: Sendable {
    /// This node's id (non-zero).
    public var id: NodeID
    /// The bootstrap configuration: the voters in force until the log (a
    /// snapshot or a configuration entry) says otherwise. Normally includes
    /// `id`; a node started to join an existing cluster lists the members it
    /// knows without itself, and is no voter (never campaigns) until a
    /// configuration entry adds it.
    public var voters: [NodeID]
    /// A follower starts a (pre-)election after a random timeout in
    /// `[electionTicks, electionTicks + electionSpreadTicks)` without hearing
    /// from a leader.
    public var electionTicks: Int
    /// Width of the election timeout's random range (default `electionTicks`,
    /// etcd's `[electionTicks, 2*electionTicks)`). It only has to exceed the
    /// time a candidate needs to win (a pre-vote and a vote round trip with
    /// their syncs) by enough that two timeouts rarely fall that close; a
    /// narrower range shortens the worst-case failover. Safety does not
    /// depend on it (the lease rests on `electionTicks` alone).
    public var electionSpreadTicks: Int
    /// A leader sends heartbeats every `heartbeatTicks`.
    public var heartbeatTicks: Int
    /// Pre-vote (Raft thesis §9.6): a node wins a pre-election before it raises its term.
    public var preVote: Bool
    /// Check-quorum: a leader that has not heard from a majority within
    /// `electionTicks` steps down.
    public var checkQuorum: Bool
    /// Length of the leader lease, in ticks. Must be `< electionTicks - 1`
    /// (see `RaftNode.hasLease`); defaults to `electionTicks - 2`.
    public var leaseTicks: Int
    /// Seed of the random source for election timeouts.
    public var randomSeed: UInt64
    /// Upper bound on entries in one append message.
    public var maxEntriesPerMessage: Int
    /// Upper bound on entries sent but not yet acknowledged, per follower.
    public var maxInflightEntries: Int
    /// Upper bound on a proposal's payload.
    public var maxProposalBytes: Int
    /// The application's check of a snapshot's state, run on every snapshot
    /// message before anything else (nil: every snapshot is accepted). A
    /// snapshot it refuses is not adopted, not persisted and not answered
    /// (`MessageRejection.badSnapshot`): a leader — possibly a hostile or
    /// buggy one — cannot make a node persist a state that the node would
    /// refuse at its next start. It must be deterministic and pure.
    public var snapshotCheck: (@Sendable ([UInt8]) -> Bool)?

    public init(
        id: NodeID, voters: [NodeID], electionTicks: Int = 10, heartbeatTicks: Int = 1,
        preVote: Bool = true, checkQuorum: Bool = true, leaseTicks: Int? = nil,
        electionSpreadTicks: Int? = nil, randomSeed: UInt64 = 0, maxEntriesPerMessage: Int = 256,
        maxInflightEntries: Int = 4096,
        maxProposalBytes: Int = 1 << 20, snapshotCheck: (@Sendable ([UInt8]) -> Bool)? = nil
    ) {
        self.id = id
        self.voters = voters
        self.electionTicks = electionTicks
        self.heartbeatTicks = heartbeatTicks
        self.preVote = preVote
        self.checkQuorum = checkQuorum
        self.leaseTicks = leaseTicks ?? (electionTicks - 2)
        self.electionSpreadTicks = electionSpreadTicks ?? electionTicks
        self.randomSeed = randomSeed
        self.maxEntriesPerMessage = maxEntriesPerMessage
        self.maxInflightEntries = maxInflightEntries
        self.maxProposalBytes = maxProposalBytes
        self.snapshotCheck = snapshotCheck
    }

    /// Traps on a configuration the core cannot run safely with.
    func validate() {
        precondition(id != noNode, "raft: node id 0 is reserved")
        precondition(!voters.isEmpty, "raft: no voters")
        precondition(!voters.contains(noNode), "raft: voter id 0 is reserved")
        precondition(Set(voters).count == voters.count, "raft: duplicate voter ids")
        precondition(voters.count <= Member.maxVoters, "raft: too many voters")
        precondition(electionTicks >= 3, "raft: electionTicks must be >= 3")
        precondition(
            heartbeatTicks >= 1 && heartbeatTicks < electionTicks,
            "raft: heartbeatTicks must be in [1, electionTicks)")
        precondition(
            leaseTicks >= 1 && leaseTicks < electionTicks - 1,
            "raft: leaseTicks must be in [1, electionTicks - 1)")
        precondition(
            electionSpreadTicks >= 1 && electionSpreadTicks <= electionTicks,
            "raft: electionSpreadTicks must be in [1, electionTicks]")
        precondition(maxEntriesPerMessage >= 1 && maxEntriesPerMessage <= Message.maxEntries)
        precondition(maxInflightEntries >= maxEntriesPerMessage)
        precondition(maxProposalBytes >= 0 && maxProposalBytes <= Message.maxPayloadBytes)
    }
}

/// SplitMix64: the core's only source of randomness (election timeouts).
struct SplitMix64 {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in `0..<bound` (bound > 0); the bias is negligible for small bounds.
    mutating func below(_ bound: Int) -> Int {
        precondition(bound > 0)
        return Int(next() % UInt64(bound))
    }
}
