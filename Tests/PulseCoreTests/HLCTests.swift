// HLCTests.swift — hybrid logical clock rules, text format, parsing; SimulatedClock.

import XCTest

@testable import PulseCore

final class HLCTests: XCTestCase {
    func testMonotonicWhenWallClockStepsBack() {
        var rng = SeededRNG.fromEnvironment()
        let clock = SimulatedClock(wallNs: 1_756_987_200_000_000_000)
        var hlc = HLC()
        var previous = HLCStamp.zero
        var sawStepBack = false
        for i in 0..<20_000 {
            clock.advance(byNs: Int64.random(in: 0...2_000_000, using: &rng))
            if i % 1000 == 999 {
                clock.stepWall(byNs: -Int64.random(in: 1...5, using: &rng) * 1_000_000_000)
                sawStepBack = true
            }
            let s = hlc.now(wallMs: clock.wallMillis())
            XCTAssertGreaterThan(s, previous, "i \(i) \(rng.tag)")
            XCTAssertGreaterThanOrEqual(s.wallMs, clock.wallMillis(), rng.tag)
            previous = s
        }
        XCTAssertTrue(sawStepBack)
        // After a step back the physical part holds and the counter moves.
        var h = HLC()
        let a = h.now(wallMs: 10_000)
        let b = h.now(wallMs: 7_000)
        XCTAssertEqual(a, HLCStamp(wallMs: 10_000, counter: 0))
        XCTAssertEqual(b, HLCStamp(wallMs: 10_000, counter: 1))
        XCTAssertEqual(h.now(wallMs: 10_001), HLCStamp(wallMs: 10_001, counter: 0))
    }

    func testReceiveWithinOffsetIsAdopted() {
        var hlc = HLC()
        _ = hlc.now(wallMs: 1_000_000)
        let remote = HLCStamp(wallMs: 1_000_300, counter: 7)
        let r = hlc.receive(remote, wallMs: 1_000_001)
        XCTAssertEqual(r, .merged(HLCStamp(wallMs: 1_000_300, counter: 8)))
        XCTAssertEqual(hlc.last, HLCStamp(wallMs: 1_000_300, counter: 8))
        // Later local stamps stay above the remote one even though wall time is behind it.
        for w in [1_000_002, 1_000_100, 1_000_299, 1_000_300] as [Int64] {
            XCTAssertGreaterThan(hlc.now(wallMs: w), remote)
        }
        // Exactly maxOffset ahead is still adopted.
        var h2 = HLC(maxOffsetMs: 500)
        XCTAssertEqual(
            h2.receive(HLCStamp(wallMs: 2_500, counter: 0), wallMs: 2_000),
            .merged(HLCStamp(wallMs: 2_500, counter: 1)))
    }

    func testReceiveTooFarAheadIsRejected() {
        var hlc = HLC()
        let before = hlc.now(wallMs: 1_000_000)
        let remote = HLCStamp(wallMs: 1_000_501, counter: 3)
        let r = hlc.receive(remote, wallMs: 1_000_000)
        XCTAssertEqual(
            r, .rejectedTooFarAhead(local: HLCStamp(wallMs: 1_000_000, counter: 1), aheadMs: 501))
        XCTAssertGreaterThan(hlc.last, before)
        XCTAssertLessThan(hlc.last, remote)
        XCTAssertLessThan(hlc.now(wallMs: 1_000_010), remote)
        // A custom max offset.
        var tight = HLC(maxOffsetMs: 10)
        if case .merged = tight.receive(HLCStamp(wallMs: 111, counter: 0), wallMs: 100) {
            XCTFail("11 ms ahead must be rejected with maxOffsetMs 10")
        }
        // Extreme values must not trap.
        if case .merged = tight.receive(HLCStamp(wallMs: .max, counter: 0), wallMs: -5) {
            XCTFail("overflowing offset must be rejected")
        }
    }

    func testReceiveCounterRulesOfThePaper() {
        // l == l' == l_m: max(c, c_m) + 1
        var h = HLC(last: HLCStamp(wallMs: 100, counter: 5))
        XCTAssertEqual(
            h.receive(HLCStamp(wallMs: 100, counter: 9), wallMs: 50),
            .merged(HLCStamp(wallMs: 100, counter: 10)))
        h = HLC(last: HLCStamp(wallMs: 100, counter: 9))
        XCTAssertEqual(
            h.receive(HLCStamp(wallMs: 100, counter: 5), wallMs: 50),
            .merged(HLCStamp(wallMs: 100, counter: 10)))
        // l == l' only: c + 1
        h = HLC(last: HLCStamp(wallMs: 100, counter: 5))
        XCTAssertEqual(
            h.receive(HLCStamp(wallMs: 90, counter: 50), wallMs: 50),
            .merged(HLCStamp(wallMs: 100, counter: 6)))
        // l == l_m only: c_m + 1
        h = HLC(last: HLCStamp(wallMs: 100, counter: 5))
        XCTAssertEqual(
            h.receive(HLCStamp(wallMs: 120, counter: 50), wallMs: 110),
            .merged(HLCStamp(wallMs: 120, counter: 51)))
        // wall wins: 0
        h = HLC(last: HLCStamp(wallMs: 100, counter: 5))
        XCTAssertEqual(
            h.receive(HLCStamp(wallMs: 120, counter: 50), wallMs: 130),
            .merged(HLCStamp(wallMs: 130, counter: 0)))
    }

    func testCounterOverflowAdvancesMillisecond() {
        var h = HLC(last: HLCStamp(wallMs: 100, counter: .max))
        XCTAssertEqual(h.now(wallMs: 100), HLCStamp(wallMs: 101, counter: 0))
        h = HLC(last: HLCStamp(wallMs: 100, counter: .max))
        XCTAssertEqual(
            h.receive(HLCStamp(wallMs: 100, counter: .max), wallMs: 100),
            .merged(HLCStamp(wallMs: 101, counter: 0)))
    }

    func testOrdering() {
        let a = HLCStamp(wallMs: 5, counter: 9)
        let b = HLCStamp(wallMs: 6, counter: 0)
        let c = HLCStamp(wallMs: 6, counter: 1)
        XCTAssertLessThan(a, b)
        XCTAssertLessThan(b, c)
        XCTAssertEqual([c, a, b].sorted(), [a, b, c])
        XCTAssertTrue(HLCStamp.isOrdered(b, suffix: "zzzz", before: c, suffix: "aaaa"))
        XCTAssertTrue(HLCStamp.isOrdered(c, suffix: "aaaa", before: c, suffix: "aaab"))
        XCTAssertFalse(HLCStamp.isOrdered(c, suffix: "aaab", before: c, suffix: "aaaa"))
        XCTAssertFalse(HLCStamp.isOrdered(c, suffix: "aaaa", before: c, suffix: "aaaa"))
    }

    func testTextFormat() {
        XCTAssertEqual(
            HLCStamp(wallMs: 0x18f_3a2b_4c5d, counter: 1).text(suffix: "abcd"), "18f3a2b4c5d:0001:abcd")
        XCTAssertEqual(HLCStamp(wallMs: 0, counter: 0).text(suffix: "n1"), "0:0000:n1")
        XCTAssertEqual(HLCStamp(wallMs: 255, counter: 0x12345).text(suffix: "x"), "ff:12345:x")
        XCTAssertEqual(HLCStamp(wallMs: 255, counter: .max).description, "ff:ffffffff")
    }

    func testParse() {
        let p = HLCStamp.parse("18f3a2b4c5d:0001:abcd")
        XCTAssertEqual(p?.stamp, HLCStamp(wallMs: 0x18f_3a2b_4c5d, counter: 1))
        XCTAssertEqual(p?.suffix, "abcd")
        XCTAssertEqual(HLCStamp.parse("1:0000:a:b")?.suffix, "a:b")
        XCTAssertEqual(HLCStamp.parse("1:0000:")?.suffix, "")
        for bad in [
            "", "1", "1:0001", "1:001:abcd", "1:00001:abcd", "1:123456789:ab", "A:0001:ab", "1:000F:ab",
            ":0001:ab", "g:0001:ab", "8000000000000000:0001:ab", "10000000000000000:0001:ab", "1:-001:ab",
        ] {
            XCTAssertNil(HLCStamp.parse(bad), bad)
        }
        XCTAssertEqual(
            HLCStamp.parse("7fffffffffffffff:ffffffff:z")?.stamp, HLCStamp(wallMs: .max, counter: .max))

        var rng = SeededRNG.fromEnvironment()
        let suffixes = ["abcd", "n-01", "é☃x", "a:b", ""]
        for _ in 0..<5000 {
            let s = HLCStamp(
                wallMs: rng.logUniform(.max),
                counter: UInt32(truncatingIfNeeded: rng.logUniform(Int64(UInt32.max))))
            let suffix = suffixes.randomElement(using: &rng)!
            let text = s.text(suffix: suffix)
            let back = HLCStamp.parse(text)
            XCTAssertEqual(back?.stamp, s, "\(text) \(rng.tag)")
            XCTAssertEqual(back.map { String($0.suffix) }, suffix, "\(text) \(rng.tag)")
            // Substring input inside a larger string.
            let wrapped = "xx" + text
            XCTAssertEqual(HLCStamp.parse(wrapped.dropFirst(2))?.stamp, s)
        }
    }

    func testSimulatedClock() {
        let c = SimulatedClock(wallNs: 1_000_000_000_000, monotonicNs: 5, driftPpm: 100)
        c.advance(byNs: 1_000_000_000)
        XCTAssertEqual(c.monotonicNanos(), 5 + 1_000_100_000)
        XCTAssertEqual(c.wallNanos(), 1_000_000_000_000 + 1_000_100_000)
        // Fractions are carried: 10 × 1 µs at 100 ppm = 1 ns extra in total.
        let f = SimulatedClock(wallNs: 0, driftPpm: 100)
        for _ in 0..<10 { f.advance(byNs: 1_000) }
        XCTAssertEqual(f.monotonicNanos(), 10_001)
        c.stepWall(byNs: -3_000_000_000)
        XCTAssertEqual(c.wallNanos(), 1_000_000_000_000 + 1_000_100_000 - 3_000_000_000)
        XCTAssertEqual(c.monotonicNanos(), 5 + 1_000_100_000)
        c.setWall(ns: 42_000_000)
        XCTAssertEqual(c.wallMillis(), 42)
        c.setMonotonic(ns: 2_000_000_000)
        XCTAssertEqual(c.monotonicNanos(), 2_000_000_000)
        c.driftPpm = -50
        c.advance(byNs: 1_000_000)
        XCTAssertEqual(c.monotonicNanos(), 2_000_000_000 + 1_000_000 - 50)
        let neg = SimulatedClock(wallNs: -1)
        XCTAssertEqual(neg.wallMillis(), -1)
        // Usable through the protocol (and `Clock` resolves to PulseCore's, not the stdlib's).
        let any: any Clock = neg
        XCTAssertEqual(any.wallNanos(), -1)
        XCTAssertEqual(any.monotonicNanos(), 0)
    }
}
