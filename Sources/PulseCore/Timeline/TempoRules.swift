// Timeline/TempoRules.swift — owns the tempo-change rules of §5 (REQ-004):
// which requests are valid, in which order they are checked, and at which
// downbeat an accepted change applies. Pure: time and state are parameters.

/// Why a tempo change request is refused.
public enum TempoRefusal: Sendable, Hashable {
    /// Outside [minBpm, maxBpm] (422).
    case outOfRange(requested: Int64, minBpm: Int64, maxBpm: Int64)
    /// More than ±10 % from the current tempo (422).
    case deltaTooLarge(requested: Int64, current: Int64)
    /// Another change is pending (409).
    case changePending(bpm: Int64, atBeat: Int64)

    /// The machine code used in API errors and the metric's `reason` label.
    public var code: String {
        switch self {
        case .outOfRange: return "out_of_range"
        case .deltaTooLarge: return "delta_too_large"
        case .changePending: return "change_pending"
        }
    }

    /// The HTTP status the contract gives this refusal.
    public var httpStatus: Int {
        switch self {
        case .outOfRange, .deltaTooLarge: return 422
        case .changePending: return 409
        }
    }

    /// A sentence for operators.
    public var message: String {
        switch self {
        case .outOfRange(let requested, let minBpm, let maxBpm):
            return "tempo_bpm \(requested) is outside [\(minBpm), \(maxBpm)]"
        case .deltaTooLarge(let requested, let current):
            return "tempo_bpm \(requested) differs from the current \(current) by more than 10%"
        case .changePending(let bpm, let atBeat):
            return "a change to \(bpm) bpm is already pending at beat \(atBeat)"
        }
    }
}

/// The rules of §5, checked in the order the contract writes them.
public enum TempoRules {
    /// Returns the first rule `requested` breaks, or nil when it may be committed.
    /// `|requested - current| * 10 <= current` is the ±10 % rule in exact integers.
    public static func check(
        requested: Int64, current: Int64, minBpm: Int64, maxBpm: Int64, pending: TempoChange?
    ) -> TempoRefusal? {
        if requested < minBpm || requested > maxBpm {
            return .outOfRange(requested: requested, minBpm: minBpm, maxBpm: maxBpm)
        }
        let delta = requested > current ? requested - current : current - requested
        if delta * 10 > current { return .deltaTooLarge(requested: requested, current: current) }
        if let pending { return .changePending(bpm: pending.bpm, atBeat: pending.atBeat) }
        return nil
    }

    /// The downbeat a change committed at `committedNs` applies at: the first
    /// downbeat whose instant is at least `commitRoundNs` after the commit, that
    /// has not been published yet (`>= firstUnpublishedBeat`) and is after the
    /// epoch's start. Never retroactive.
    public static func applyBeat(
        timeline: Timeline, committedNs: Int64, commitRoundNs: Int64, firstUnpublishedBeat: Int64
    ) -> Int64 {
        let earliestNs = committedNs + commitRoundNs
        var k = max(firstUnpublishedBeat, timeline.epoch.startBeat + 1)
        // First beat whose instant is >= earliestNs.
        let atOrBefore = timeline.beat(atOrBeforeNs: earliestNs)
        let firstAfter = timeline.instantNs(ofBeat: atOrBefore) >= earliestNs ? atOrBefore : atOrBefore + 1
        k = max(k, firstAfter)
        return timeline.nextDownbeat(atOrAfter: k)
    }
}
