// PulsePolicy/TickPolicy.swift — owns the mapping from monotonic time to Raft
// ticks and to the lease deadline (fault 1 of issue #10).
//
// Invariant (the lease proof's caller side, Sources/Raft/RaftNode.swift):
// tick number n is delivered no earlier than `start + n × tickNs` on the
// monotonic clock, and every tick that is due is delivered BEFORE any message
// is stepped. A follower resuming from a stall therefore counts the silence
// first and hears the leader's heartbeat after: its "last contact" is the
// heartbeat, so it stays sticky for a whole election timeout from then on.
// (Stepping first, as e72aafc did, let it ack the heartbeat — renewing the
// lease — and then count ≥ electionTicks at once and vote for a rival.)

/// Ticks due at a monotonic time, with catch-up after a stall (bounded).
public struct TickPolicy: Sendable {
    public let tickNs: Int64
    /// Monotonic time of the last delivered tick.
    public private(set) var lastTickMonoNs: Int64
    /// Upper bound on ticks delivered at once (beyond it the lease and the
    /// election timers are long over anyway).
    public static let maxCatchUp = 10_000

    public init(tickNs: Int64, startMonoNs: Int64) {
        precondition(tickNs > 0)
        self.tickNs = tickNs
        self.lastTickMonoNs = startMonoNs
    }

    /// The ticks due at `nowMonoNs` (0 or more); marks them delivered.
    public mutating func takeDue(nowMonoNs: Int64) -> Int {
        let elapsed = nowMonoNs - lastTickMonoNs
        guard elapsed >= tickNs else { return 0 }
        let due = min(Int(elapsed / tickNs), Self.maxCatchUp)
        lastTickMonoNs += Int64(due) * tickNs
        // Beyond the catch-up bound: restart the count from now (never early).
        if nowMonoNs - lastTickMonoNs >= tickNs { lastTickMonoNs = nowMonoNs }
        return due
    }

    /// The monotonic time before which a lease of `remainingTicks` (counted
    /// after the last delivered tick) certainly holds; 0 without a lease.
    public func leaseDeadline(remainingTicks: Int) -> Int64 {
        remainingTicks > 0 ? lastTickMonoNs + Int64(remainingTicks) * tickNs : 0
    }
}
