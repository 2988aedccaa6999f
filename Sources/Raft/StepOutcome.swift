// StepOutcome.swift — what `RaftNode.step` did with a message, and why it
// refused one.
//
// The core trusts no message (etcd-style): a peer may be buggy or hostile and
// still send well-formed frames. Every term, index, commit and hint is checked
// against the local log before it is used, so no message can trap the node,
// overflow its arithmetic, or make it persist a state that cannot be
// restarted. A refused message changes nothing; the caller counts it by
// `MessageRejection.rawValue` (a small closed set of snake_case reasons).

/// Why a message was refused (or, for `commitBeyondLog`, corrected).
public enum MessageRejection: String, Sendable, Equatable, CaseIterable {
    /// Fails `Message.structuralProblem()` (ids, entries, snapshot shape).
    case malformed = "malformed"
    /// Not addressed to this node.
    case misaddressed = "misaddressed"
    /// A vote or pre-vote request from a node that is not a voter of this
    /// node's current configuration (not yet added, or removed).
    case unknownSender = "unknown_sender"
    /// A term at or above `RaftNode.maxTerm`: no election produces it, and
    /// adopting it would bring `term + 1` near overflow for good.
    case termAbsurd = "term_absurd"
    /// A term more than one step into the high range (`RaftNode.freeTermLimit`
    /// and above) beyond our own: our term advanced by one step instead of
    /// jumping to it, and the message was not stepped (see `RaftNode.maxTerm`).
    case termJump = "term_jump"
    /// A snapshot whose state the application's check (`RaftNode.init`'s
    /// `snapshotCheck`) refuses: not adopted, not persisted, not answered.
    case badSnapshot = "bad_snapshot"
    /// An index (append position, snapshot index) at or above `RaftNode.maxIndex`.
    case indexAbsurd = "index_absurd"
    /// An append, heartbeat or snapshot from a node that is not the leader we
    /// already follow in this term (Raft has at most one leader per term).
    case secondLeader = "second_leader"
    /// A heartbeat whose commit lies beyond our last index: stepped as leader
    /// contact, but its commit is ignored (clamped to our current commit).
    case commitBeyondLog = "commit_beyond_log"
    /// An append response acknowledging an index beyond the leader's log.
    case indexBeyondLog = "index_beyond_log"
    /// A rejection whose hint lies beyond the rejected index (or the log).
    case hintBeyondLog = "hint_beyond_log"
    /// A TimeoutNow from a node that is not our leader in this term.
    case timeoutNowNotFromLeader = "timeout_now_not_from_leader"
    /// An append carrying a configuration entry that is not a well-formed
    /// change (`ConfigChange.decode`: bounded ids, no duplicates, never an
    /// empty voter set, at most `Member.maxVoters`), or a snapshot whose voter
    /// set is not usable (`Member.problem`). Nothing of the message is used.
    case badConfigEntry = "bad_config_entry"
    /// A snapshot, to a voter, whose voter set shares no node with it, its
    /// sender or the voters of its configuration (`RaftNode.isForeign`): no
    /// real leader sends one. Nothing of the message is used.
    case foreignVoterSet = "foreign_voter_set"

    /// The snake_case reason, for `backbeat_rejected_input_total{reason}`.
    public var reason: String { rawValue }
}

/// The result of `RaftNode.step`.
public enum StepOutcome: Equatable, Sendable {
    /// Stepped (which includes messages the protocol ignores, such as stale terms).
    case stepped
    /// Stepped after an out-of-range field was clamped; counted like a refusal.
    case clamped(MessageRejection)
    /// Refused: the node's state is unchanged.
    case refused(MessageRejection)

    /// The reason to count, if the message was refused or corrected.
    public var rejection: MessageRejection? {
        switch self {
        case .stepped: return nil
        case .clamped(let r), .refused(let r): return r
        }
    }

    /// True unless the message was refused outright.
    public var wasStepped: Bool {
        if case .refused = self { return false }
        return true
    }
}
