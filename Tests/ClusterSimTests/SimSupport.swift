// SimSupport.swift — the simulator's building blocks: a seeded random
// source, the event queue, and per-node simulated clocks (offset, rate error,
// steps) expressed as functions of the simulation's true time.
import PulseCore

/// SplitMix64, the simulator's only source of randomness.
struct SimRNG {
    private var state: UInt64
    init(seed: UInt64) { state = seed &* 0x2545_F491_4F6C_DD1D &+ 1 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func chance(_ p: Double) -> Bool { Double(next() >> 11) / Double(1 << 53) < p }
    /// Uniform in lo...hi.
    mutating func range(_ lo: Int64, _ hi: Int64) -> Int64 {
        hi <= lo ? lo : lo + Int64(next() % UInt64(hi - lo + 1))
    }
    mutating func pick<T>(_ xs: [T]) -> T { xs[Int(next() % UInt64(xs.count))] }
}

/// A min-heap of timed events; ties in insertion order (deterministic).
struct EventQueue<T> {
    private var heap: [(at: Int64, seq: UInt64, item: T)] = []
    private var seq: UInt64 = 0
    var isEmpty: Bool { heap.isEmpty }
    var count: Int { heap.count }

    mutating func push(_ at: Int64, _ item: T) {
        seq &+= 1
        heap.append((at, seq, item))
        var i = heap.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if less(i, p) {
                heap.swapAt(i, p)
                i = p
            } else {
                break
            }
        }
    }

    private func less(_ a: Int, _ b: Int) -> Bool {
        heap[a].at < heap[b].at || (heap[a].at == heap[b].at && heap[a].seq < heap[b].seq)
    }

    var nextTime: Int64? { heap.first?.at }

    mutating func pop() -> (at: Int64, item: T)? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1
            let r = l + 1
            var m = i
            if l < heap.count && less(l, m) { m = l }
            if r < heap.count && less(r, m) { m = r }
            if m == i { break }
            heap.swapAt(i, m)
            i = m
        }
        return (top.at, top.item)
    }
}

/// A node's clocks as functions of true time: monotonic runs at
/// (1 + ppb/1e9) × true time; wall = monotonic + offset (stepped by NTP).
/// Conforms to PulseCore's `Clock` via `now` (the simulation's true time).
final class NodeClock: Clock, @unchecked Sendable {
    let ppb: Int64
    let monoBase: Int64
    var wallOffsetNs: Int64
    /// The simulation's true time (shared; set by the simulator).
    var trueNs: Int64 = 0

    init(ppb: Int64, monoBase: Int64, wallOffsetNs: Int64) {
        self.ppb = ppb
        self.monoBase = monoBase
        self.wallOffsetNs = wallOffsetNs
    }

    func mono(atTrue t: Int64) -> Int64 { monoBase + t + Int64(Int128(t) * Int128(ppb) / 1_000_000_000) }
    func wall(atTrue t: Int64) -> Int64 { mono(atTrue: t) + wallOffsetNs }

    /// The earliest true time at which monotonic reads ≥ `m`.
    func trueAt(mono m: Int64) -> Int64 {
        let d = Int128(m - monoBase)
        var t = Int64(d * 1_000_000_000 / Int128(1_000_000_000 + ppb))
        while mono(atTrue: t) < m { t += 1 }
        while t > 0 && mono(atTrue: t - 1) >= m { t -= 1 }
        return t
    }
    func trueAt(wall w: Int64) -> Int64 { trueAt(mono: w - wallOffsetNs) }

    func wallNanos() -> Int64 { wall(atTrue: trueNs) }
    func monotonicNanos() -> Int64 { mono(atTrue: trueNs) }
}
