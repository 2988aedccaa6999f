// Clock/Clock.swift — owns the clock abstraction (wall + monotonic time
// sources) and a deterministic simulated clock for tests and the simulator.
// No real system clock lives here: the service provides that.

import Synchronization

/// A source of wall-clock (Unix) and monotonic time, both in nanoseconds.
///
/// Note: this shadows the standard library's `Clock` protocol for modules that
/// import PulseCore; spell the standard one `Swift.Clock` there if needed.
public protocol Clock: Sendable {
    /// Unix wall-clock time in nanoseconds (may step back or forward).
    func wallNanos() -> Int64
    /// Monotonic time in nanoseconds since an arbitrary origin (never goes back).
    func monotonicNanos() -> Int64
}

extension Clock {
    /// Unix wall-clock time in milliseconds (floor), the HLC's physical input.
    public func wallMillis() -> Int64 {
        floorDiv(wallNanos(), 1_000_000)
    }
}

/// A settable clock for tests and the simulator. Thread-safe (state behind a
/// `Mutex`).
///
/// ``advance(byNs:)`` models the passing of true time: the monotonic and the
/// wall clock both advance by `ns * (1 + driftPpm / 1e6)`. The drift rate is
/// kept in exact integer parts per billion (so 0.001 ppm resolution) and the
/// fractional nanoseconds are carried over between calls, so no drift is lost
/// to rounding. Wall steps (as NTP would make) and direct sets affect only the
/// clock they name.
public final class SimulatedClock: Clock {
    private struct State {
        var wallNs: Int64
        var monotonicNs: Int64
        var driftPpb: Int64
        /// Carried drift in units of 1e-9 ns, |residual| < 1e9.
        var residual: Int128 = 0
    }

    private let state: Mutex<State>

    public init(wallNs: Int64, monotonicNs: Int64 = 0, driftPpm: Double = 0) {
        state = Mutex(
            State(wallNs: wallNs, monotonicNs: monotonicNs, driftPpb: Self.ppb(driftPpm)))
    }

    private static func ppb(_ ppm: Double) -> Int64 {
        Int64((ppm * 1000).rounded())
    }

    public func wallNanos() -> Int64 { state.withLock { $0.wallNs } }
    public func monotonicNanos() -> Int64 { state.withLock { $0.monotonicNs } }

    /// Drift rate in parts per million (positive: this clock runs fast),
    /// stored rounded to 0.001 ppm.
    public var driftPpm: Double {
        get { state.withLock { Double($0.driftPpb) / 1000 } }
        set { state.withLock { $0.driftPpb = Self.ppb(newValue) } }
    }

    /// Lets `trueNs` (≥ 0) of true time pass; both clocks advance by it plus drift.
    public func advance(byNs trueNs: Int64) {
        precondition(trueNs >= 0, "time only moves forward; use stepWall(byNs:) to step")
        state.withLock { s in
            let exact = Int128(trueNs) * Int128(s.driftPpb) + s.residual
            let whole = exact / 1_000_000_000
            s.residual = exact - whole * 1_000_000_000
            let d = trueNs + Int64(whole)
            s.monotonicNs += d
            s.wallNs += d
        }
    }

    /// Steps the wall clock by `ns` (negative steps it back); monotonic is unaffected.
    public func stepWall(byNs ns: Int64) {
        state.withLock { $0.wallNs += ns }
    }

    /// Sets the wall clock; monotonic is unaffected.
    public func setWall(ns: Int64) {
        state.withLock { $0.wallNs = ns }
    }

    /// Sets the monotonic clock. Precondition: not earlier than its current value.
    public func setMonotonic(ns: Int64) {
        state.withLock { s in
            precondition(ns >= s.monotonicNs, "monotonic time cannot go back")
            s.monotonicNs = ns
        }
    }
}
