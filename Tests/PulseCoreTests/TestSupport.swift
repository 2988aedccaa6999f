// TestSupport.swift — seeded RNG shared by the property tests.

import Foundation

/// SplitMix64: small, fast, seedable. The seed comes from PULSE_TEST_SEED if
/// set, otherwise it is random; every failure message includes it.
struct SeededRNG: RandomNumberGenerator {
    private var state: UInt64
    let seed: UInt64

    init(seed: UInt64) {
        self.seed = seed
        state = seed
    }

    static func fromEnvironment() -> SeededRNG {
        if let s = ProcessInfo.processInfo.environment["PULSE_TEST_SEED"], let v = UInt64(s) {
            return SeededRNG(seed: v)
        }
        return SeededRNG(seed: UInt64.random(in: 0...UInt64.max))
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Log-uniform value in 0...max, so small and huge magnitudes are both exercised.
    mutating func logUniform(_ max: Int64) -> Int64 {
        precondition(max >= 0)
        if max == 0 { return 0 }
        let bits = 64 - max.leadingZeroBitCount
        let b = Int.random(in: 1...bits, using: &self)
        let hi = b >= 63 ? max : Swift.min(max, (Int64(1) << b) - 1)
        return Int64.random(in: 0...hi, using: &self)
    }

    var tag: String { "[seed \(seed); rerun with PULSE_TEST_SEED=\(seed)]" }
}
