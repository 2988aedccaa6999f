// PulsePolicy/Faults.swift — owns the switch between the fixed policy and the
// logic of commit e72aafc ("legacy"), fault by fault (issue #10).
//
// The legacy behaviours exist only so the whole-cluster simulator can show
// each fault failing before its fix passes; the service always runs with
// `LegacyFaults.none`.

/// Which of the six faults of issue #10 to reproduce (all false in production).
public struct LegacyFaults: Sendable, Equatable {
    /// 1. A message is stepped before the ticks that are due (stall catch-up after the step).
    public var stepBeforeTicks = false
    /// 2. The lease is checked before the spin only, and bytes queued behind a
    ///    dead link are never discarded (no socket abort, no kernel user timeout).
    public var staleBytes = false
    /// 3. A new leader trusts its own echo (`lastSeenIndex`) to avoid republishing.
    public var echoOnlyTakeover = false
    /// 4. Tempo: apply beat chosen at request time, no barrier before the commit,
    ///    a leader publishes before its term's first entry is applied, and a
    ///    proposer that lost leadership answers "refused".
    public var requestTimeTempo = false
    /// 5. One shared, lossy doorway for NATS deliveries and store completions.
    public var sharedDoorway = false
    /// 6. Degraded nodes each follow their own last leader's clock with 3 ms turns.
    public var ownReferenceTurns = false

    public init(
        stepBeforeTicks: Bool = false, staleBytes: Bool = false, echoOnlyTakeover: Bool = false,
        requestTimeTempo: Bool = false, sharedDoorway: Bool = false, ownReferenceTurns: Bool = false
    ) {
        self.stepBeforeTicks = stepBeforeTicks
        self.staleBytes = staleBytes
        self.echoOnlyTakeover = echoOnlyTakeover
        self.requestTimeTempo = requestTimeTempo
        self.sharedDoorway = sharedDoorway
        self.ownReferenceTurns = ownReferenceTurns
    }

    /// Puts fault `n` (1–6, as numbered in issue #10) back.
    public mutating func enable(fault n: Int) {
        switch n {
        case 1: stepBeforeTicks = true
        case 2: staleBytes = true
        case 3: echoOnlyTakeover = true
        case 4: requestTimeTempo = true
        case 5: sharedDoorway = true
        case 6: ownReferenceTurns = true
        default: break
        }
    }

    /// The fixed policy.
    public static let none = LegacyFaults()
    /// Every fault of e72aafc at once.
    public static let all = LegacyFaults(
        stepBeforeTicks: true, staleBytes: true, echoOnlyTakeover: true, requestTimeTempo: true,
        sharedDoorway: true, ownReferenceTurns: true)
}
