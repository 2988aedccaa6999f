// PulsePolicy/KVLease.swift — leadership as a NATS JetStream KV lease
// (issue 21), pure: no clock, no I/O. The adapter (Pulse/KV) sends the
// operation `next(nowMonoNs:)` returns, off the loop thread, and hands the
// reply back with `complete(_:nowMonoNs:)`; one operation is in flight at a
// time, so every reply belongs to the last operation taken.
//
// The lease key (`leader` in the cluster's lease bucket, whose max age is
// the TTL) holds the claim of one node incarnation (`owner`):
//
//   candidate ── create-if-absent ──▶ holder (term = the key's revision)
//   holder ── CAS update on the last revision, every `renewEveryNs` ──▶ holder
//   holder ── conflict (the revision moved: another node holds it, or the
//             key expired and is gone) ──▶ candidate
//   holder ── unknown fate (timeout, lost connection) ──▶ read the key:
//             ours → learn its revision (no lease from a read) and renew;
//             absent or another's → candidate
//   holder ── release() (SIGTERM, after the last frame came back)
//             ── delete with the revision check ──▶ released
//
// The fencing token: the key's revision is the bucket stream's sequence
// number, which only grows (a delete, an expiry and a new create never
// reuse one). A holder's `term` is the revision its create (or the first
// renewal after it learned the key by a read) produced, so a successor's
// term is greater than every earlier holder's; frames carry it as `term`.
//
// Why at most one node publishes (the lease argument, like the Raft lease's
// in Sources/Raft/RaftNode.swift): a holder publishes only while, on its own
// monotonic clock, less than `validNs = ttlNs − marginNs` has passed since
// it SENT the write (create or CAS renewal) that succeeded. The server
// stored that write no earlier than it was sent, and the key cannot vanish
// before its max age (`ttlNs`) has passed on the server's clock since that
// store; until then a rival's create fails (the key exists) and so does any
// CAS but the holder's own (the revision is the holder's). A rival therefore
// becomes holder, and publishes, only after `send + ttlNs` in real time as the
// server measures it. `marginNs` covers what makes the two measures differ:
// the clock-rate difference between this node's monotonic clock and the
// server's clock (`clockRatePpm` of the TTL) and the wall-clock offset
// between the JetStream servers of the bucket's replicas (a new stream
// leader ages the key on its own wall clock; `serverSkewNs`, NTP-bounded).
// Stopped time counts: CLOCK_MONOTONIC runs while the process is stopped
// (SIGSTOP), so a holder that wakes past its lease finds `mayPublish` false
// before it reads any socket, and publishes again only after a write sent
// after the wake succeeded. A server clock stepped forward by more than the
// margin, or a machine suspend (CLOCK_MONOTONIC stops), is outside the
// argument (docs/decisions.md).
//
// A read never extends the lease: it only tells the revision to renew on,
// because the time the read's revision was written is not known.
import PulseCore

/// The lease's timing. The defaults give a failover within 1 s of a holder
/// killed: its key expires within `ttlNs` of its last renewal (stored before
/// the kill), a candidate retries every `renewEveryNs`, and the successor
/// publishes after the beat side's take-over guard (295 ms, BeatDriver) at
/// the next instant.
public struct KVLeaseTiming: Sendable, Equatable {
    /// The lease bucket's max age: a key not renewed for this long expires.
    public var ttlNs: Int64 = 450_000_000
    /// A holder renews (and a candidate retries its create) this often.
    public var renewEveryNs: Int64 = 50_000_000
    /// The largest clock-rate difference between a node's monotonic clock
    /// and the servers' clocks, in parts per million of the TTL.
    public var clockRatePpm: Int64 = 10_000
    /// The largest wall-clock offset between the bucket's JetStream servers.
    public var serverSkewNs: Int64 = 50_000_000
    /// No definite answer to a lease write for this long: the store is
    /// unreachable (degradation).
    public var unreachableAfterNs: Int64 = 1_000_000_000

    public init() {}

    /// What the lease keeps back from the TTL for clock differences.
    public var marginNs: Int64 { ttlNs / 1_000_000 * clockRatePpm + serverSkewNs }
    /// How long after sending its last successful write a holder may publish.
    public var validNs: Int64 { ttlNs - marginNs }

    /// Why these values cannot hold a lease, or nil: the lease must outlast
    /// at least two renewals, so one slow or lost reply does not stop the beat.
    public var problem: String? {
        if ttlNs <= 0 || renewEveryNs <= 0 || clockRatePpm < 0 || serverSkewNs < 0 {
            return "lease timing must be positive"
        }
        if validNs < 2 * renewEveryNs {
            return "the lease's TTL minus its clock margin (\(validNs / 1_000_000) ms) must be at least two renewals"
                + " (\(2 * renewEveryNs / 1_000_000) ms)"
        }
        return nil
    }
}

/// An operation on the lease key, for the adapter to send.
public enum KVLeaseOp: Equatable, Sendable {
    /// Create the key with our claim unless it exists (a delete marker counts as absent).
    case create
    /// Replace our claim if the key's last revision is still `lastRevision`.
    case update(lastRevision: UInt64)
    /// Read the key (after a write whose fate is unknown).
    case read
    /// Delete the key if its last revision is still `lastRevision` (hand-over).
    case delete(lastRevision: UInt64)
}

/// What the KV answered to the operation in flight.
public enum KVLeaseReply: Equatable, Sendable {
    /// The create or update was stored at this revision; the delete was stored.
    case written(revision: UInt64)
    /// The revision check failed (the key exists, or moved on, or is gone).
    case conflict
    /// The read found the key at `revision`, claimed by `owner`.
    case found(revision: UInt64, owner: String)
    /// The read found no key (never written, deleted, or expired).
    case absent
    /// No answer, or a failure after sending: the write may or may not be stored.
    case unknown
    /// Certainly not sent (no connection, no JetStream): nothing changed.
    case notSent
}

/// What a reply changed, for the node.
public enum KVLeaseEvent: Equatable, Sendable {
    /// This node holds the key from now, with this fencing token.
    case acquired(term: UInt64)
    /// This node no longer holds the key (a rival's, or expired).
    case lost(term: UInt64)
    /// The hand-over's delete is done (or the key was no longer ours).
    case released
    /// The key was taken at revision `term`, below `floor`, the highest this
    /// node has seen: the bucket was deleted and recreated (its revisions
    /// restarted). Not a holding: a fencing token never goes back.
    case fenced(term: UInt64, floor: UInt64)
}

/// One node incarnation's side of the lease. Not thread-safe: the loop owns it.
public struct KVLease: Sendable {
    public enum Role: Equatable, Sendable {
        case candidate
        case holder
        /// Handing over: no renewal, no publishing; deleting the key.
        case releasing
        /// Done: never takes the key again.
        case released
    }

    public let timing: KVLeaseTiming
    /// This incarnation's claim, written as the key's value (node id and a
    /// start-up nonce: a restarted node does not take its past self's key).
    public let owner: String
    public private(set) var role: Role = .candidate
    /// The fencing token of the current (or last) holding; 0 before any.
    public private(set) var term: UInt64 = 0
    /// Whether the hand-over's delete carries the release marker (the short
    /// guard for the successor): only after the holder's last frame came
    /// back (`release(marked:)`); never after a `stepDown`.
    public private(set) var releaseMarked = true
    /// Releasing to step down (`stepDown`): a candidate again afterwards.
    public private(set) var rejoinAfterRelease = false
    /// The key's revision as our last write (or read) left it.
    public private(set) var revision: UInt64 = 0
    /// The highest revision of the key this node has seen (its own writes,
    /// and what the watch reported: `noteRevision`). The bucket's stream
    /// sequence only grows, so a take below it means the bucket was deleted
    /// and recreated: refused (`.fenced`, review of 2026-12-07, finding 4).
    public private(set) var termFloor: UInt64 = 0
    /// Send time of the last write that succeeded and left `revision`; nil
    /// when the revision was learned by a read (no lease until a renewal).
    public private(set) var validFromSentMonoNs: Int64?
    /// The operation in flight and when it was sent.
    public private(set) var inFlight: (op: KVLeaseOp, sentMonoNs: Int64)?
    /// A write's fate is unknown: read the key before any other operation.
    public private(set) var mustRead = false
    /// When the next create or renewal is due.
    public private(set) var nextAttemptMonoNs: Int64 = .min
    /// The last definite answer to a write (written or conflict). A read's
    /// answer does not count: JetStream serves reads from any replica of a
    /// bucket (direct get), also while the stream has no quorum to store a
    /// write (found with a 3-server cluster cut to one, issue 21).
    public private(set) var lastAnswerMonoNs: Int64

    /// The body of the hand-over's delete of `claim`: what tells the
    /// watchers it was the holder's own release, after its last frame came
    /// back (KVLeaseLeadership.swift: only that earns the short guard).
    public static func releaseMarker(claim: [UInt8]) -> [UInt8] { Array("released ".utf8) + claim }

    public init(timing: KVLeaseTiming, owner: String, nowMonoNs: Int64) {
        self.timing = timing
        self.owner = owner
        self.lastAnswerMonoNs = nowMonoNs
    }

    // MARK: publishing

    /// The monotonic time the lease ends (0: no lease).
    public var leaseUntilMonoNs: Int64 {
        guard role == .holder, let from = validFromSentMonoNs else { return 0 }
        return from &+ timing.validNs
    }

    /// Whether this node may publish a frame at `nowMonoNs` (beat path).
    @inline(__always)
    public func mayPublish(nowMonoNs: Int64) -> Bool { nowMonoNs < leaseUntilMonoNs }

    /// Whether no write got a definite answer for `unreachableAfterNs`.
    public func unreachable(nowMonoNs: Int64) -> Bool {
        nowMonoNs - lastAnswerMonoNs >= timing.unreachableAfterNs
    }

    // MARK: driving

    /// The operation to send now, if any; it is in flight from `nowMonoNs`.
    public mutating func next(nowMonoNs: Int64) -> KVLeaseOp? {
        guard inFlight == nil else { return nil }
        let op: KVLeaseOp
        switch role {
        case .released:
            return nil
        case _ where mustRead:
            op = .read
        case .releasing:
            op = .delete(lastRevision: revision)
        case .candidate:
            guard nowMonoNs >= nextAttemptMonoNs else { return nil }
            op = .create
        case .holder:
            guard nowMonoNs >= nextAttemptMonoNs else { return nil }
            op = .update(lastRevision: revision)
        }
        inFlight = (op, nowMonoNs)
        return op
    }

    /// The watch reported revision `rev` of the key.
    public mutating func noteRevision(_ rev: UInt64) { termFloor = max(termFloor, rev) }

    /// The watch saw the key deleted or expired: a candidate tries at once.
    public mutating func keyGone() {
        if role == .candidate { nextAttemptMonoNs = .min }
    }

    /// Starts the hand-over: stops publishing now; the key is deleted with
    /// the revision check once no operation is in flight. A candidate is
    /// released at once, or after its create in flight (which may take the
    /// key: then that is deleted).
    /// `marked`: the holder's last frame came back (the delete carries the
    /// release marker); false when it hands over without that echo.
    public mutating func release(marked: Bool = true) -> [KVLeaseEvent] {
        releaseMarked = marked
        rejoinAfterRelease = false
        switch role {
        case .candidate where inFlight == nil && !mustRead:
            role = .released
            return [.released]
        case .candidate:
            role = .releasing
            return []
        case .holder:
            role = .releasing
            validFromSentMonoNs = nil
            return []
        case .releasing, .released:
            return []
        }
    }

    /// A holder that cannot get ready (its term start never applied) gives
    /// the key up so another node can try: deleted with the revision check
    /// and no release marker (the successor takes the full guard); a
    /// candidate again, its next create a `stepDownBackoffNs` later.
    public mutating func stepDown() {
        guard role == .holder else { return }
        role = .releasing
        releaseMarked = false
        rejoinAfterRelease = true
        validFromSentMonoNs = nil
    }

    /// How long a node that stepped down waits before it tries the key again.
    public var stepDownBackoffNs: Int64 { 2 * timing.ttlNs }

    /// The release is done: stopped for good, or a candidate after a step-down.
    private mutating func released(_ nowMonoNs: Int64) -> [KVLeaseEvent] {
        validFromSentMonoNs = nil
        guard rejoinAfterRelease else {
            role = .released
            return [.released]
        }
        rejoinAfterRelease = false
        releaseMarked = true
        role = .candidate
        nextAttemptMonoNs = nowMonoNs &+ stepDownBackoffNs
        return [.lost(term: term)]
    }

    /// The reply to the operation in flight (ignored without one).
    public mutating func complete(_ reply: KVLeaseReply, nowMonoNs: Int64) -> [KVLeaseEvent] {
        guard let (op, sent) = inFlight else { return [] }
        inFlight = nil
        switch (op, reply) {
        case (.read, _), (_, .unknown), (_, .notSent): break
        default: lastAnswerMonoNs = nowMonoNs
        }
        switch (op, reply) {
        case (_, .notSent):
            if role == .releasing && revision == 0 {
                role = .released  // a create in flight at the release, never sent
                return [.released]
            }
            nextAttemptMonoNs = nowMonoNs &+ timing.renewEveryNs / 2
            return []
        case (.read, .unknown):
            return []  // read again next time; the lease runs down meanwhile
        case (_, .unknown):
            mustRead = true
            return []
        case (.create, .written(let rev)):
            guard rev > revision, rev >= termFloor else { return fence(rev, nowMonoNs) }
            if role == .releasing {
                revision = rev  // taken while handing over: delete it next
                return []
            }
            return take(rev, sent: sent)
        case (.create, .conflict):
            if role == .releasing { return lose(nowMonoNs) }
            nextAttemptMonoNs = sent &+ timing.renewEveryNs
            return []
        case (.update, .written(let rev)):
            guard rev > revision else { return [] }
            revision = rev
            termFloor = max(termFloor, rev)
            if role == .holder {
                validFromSentMonoNs = sent
                nextAttemptMonoNs = sent &+ timing.renewEveryNs
            }
            return []
        case (.update, .conflict):
            return lose(nowMonoNs)
        case (.read, .found(let rev, let who)):
            mustRead = false
            guard who == owner, rev >= revision, rev > 0 else { return lose(nowMonoNs) }
            if role == .candidate && rev < termFloor { return fence(rev, nowMonoNs) }
            revision = rev
            termFloor = max(termFloor, rev)  // a revision seen, as a write's or the watch's
            validFromSentMonoNs = nil  // a read proves no send time
            nextAttemptMonoNs = .min  // renew (or delete) at once
            if role == .candidate {
                // Our create's fate was unknown and it was stored: the key
                // is ours, but publishing waits for the renewal.
                role = .holder
                term = rev
                return [.acquired(term: rev)]
            }
            return []
        case (.read, .absent):
            mustRead = false
            return lose(nowMonoNs)
        case (.delete, .written), (.delete, .conflict):
            return released(nowMonoNs)
        default:
            return []  // a reply that does not fit the operation: nothing learned
        }
    }

    /// A take at `rev`, below what this node has seen: no holding; the
    /// next create waits until the refused key expired (a TTL).
    private mutating func fence(_ rev: UInt64, _ nowMonoNs: Int64) -> [KVLeaseEvent] {
        let event = KVLeaseEvent.fenced(term: rev, floor: max(termFloor, revision))
        if role == .releasing {
            role = .released
            return [event, .released]
        }
        nextAttemptMonoNs = nowMonoNs &+ timing.ttlNs
        return [event]
    }

    private mutating func take(_ rev: UInt64, sent: Int64) -> [KVLeaseEvent] {
        termFloor = max(termFloor, rev)
        role = .holder
        term = rev
        revision = rev
        validFromSentMonoNs = sent
        nextAttemptMonoNs = sent &+ timing.renewEveryNs
        return [.acquired(term: rev)]
    }

    private mutating func lose(_ nowMonoNs: Int64) -> [KVLeaseEvent] {
        validFromSentMonoNs = nil
        switch role {
        case .releasing:
            return released(nowMonoNs)
        case .released:
            return []
        case .candidate:
            nextAttemptMonoNs = nowMonoNs
            return []
        case .holder:
            role = .candidate
            nextAttemptMonoNs = nowMonoNs
            return [.lost(term: term)]
        }
    }
}
