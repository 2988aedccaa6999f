// TimelineTests.swift — property and example tests for TempoEpoch/Timeline.

import XCTest

@testable import PulseCore

final class TimelineTests: XCTestCase {
    /// Independent oracle: 128-bit floor arithmetic with the stdlib's Int128.
    private func referenceInstant(_ e: TempoEpoch, _ k: Int64) -> Int64 {
        let num = Int128(k - e.startBeat) * 60_000_000_000
        var q = num / Int128(e.bpm)
        if num % Int128(e.bpm) < 0 { q -= 1 }
        return e.startNs + Int64(q)
    }

    /// Largest delta (beats after start) whose instant still fits in Int64 with margin.
    private func maxDelta(_ e: TempoEpoch) -> Int64 {
        let roomNs = Int128(Int64.max - e.startNs) - 2 * 60_000_000_000
        return Int64(min(roomNs * Int128(e.bpm) / 60_000_000_000, Int128(1_000_000_000_000)))
    }

    private func randomEpoch(_ rng: inout SeededRNG) -> TempoEpoch {
        TempoEpoch(
            startBeat: rng.logUniform(1_000_000_000_000),
            startNs: Int64.random(in: 1_500_000_000_000_000_000...1_900_000_000_000_000_000, using: &rng),
            bpm: Int64.random(in: 1...6000, using: &rng))
    }

    func testInstantMatchesReferenceIsStrictlyIncreasingAndInvertible() {
        var rng = SeededRNG.fromEnvironment()
        for _ in 0..<2000 {
            let e = randomEpoch(&rng)
            let bar = Int.random(in: 1...16, using: &rng)
            let tl = Timeline(epoch: e, bar: bar, phaseCount: Int.random(in: 1...bar, using: &rng))
            for _ in 0..<20 {
                let k = e.startBeat + rng.logUniform(maxDelta(e))
                let t = tl.instantNs(ofBeat: k)
                let ctx = "epoch \(e) k \(k) \(rng.tag)"
                XCTAssertEqual(t, referenceInstant(e, k), ctx)
                let t1 = tl.instantNs(ofBeat: k + 1)
                XCTAssertLessThan(t, t1, ctx)
                XCTAssertEqual(tl.beat(atOrBeforeNs: t), k, ctx)
                XCTAssertEqual(tl.beat(atOrBeforeNs: t - 1), k - 1, ctx)
                XCTAssertEqual(tl.beat(atOrBeforeNs: t1 - 1), k, ctx)
                XCTAssertEqual(tl.nextBeat(afterNs: t), k + 1, ctx)
                XCTAssertEqual(tl.deadlineNs(ofBeat: k), t1, ctx)
                // A random instant between the two beats maps back to k.
                let mid = Int64.random(in: t..<t1, using: &rng)
                XCTAssertEqual(tl.beat(atOrBeforeNs: mid), k, ctx)
            }
        }
    }

    func testLargeBeatIndicesAtHighTempo() {
        // k = 1e12 at 6000 bpm: reached through an epoch that starts near it.
        let e = TempoEpoch(startBeat: 999_000_000_000, startNs: 1_756_987_200_000_000_000, bpm: 6000)
        let tl = Timeline(epoch: e, bar: 4, phaseCount: 2)
        let k: Int64 = 1_000_000_000_000
        XCTAssertEqual(tl.instantNs(ofBeat: k), 1_756_987_200_000_000_000 + 1_000_000_000 * 10_000_000)
        XCTAssertEqual(tl.beat(atOrBeforeNs: tl.instantNs(ofBeat: k)), k)
        // 128-bit intermediate: delta * 60e9 overflows Int64 for delta > 1.5e8.
        let e2 = TempoEpoch(startBeat: 0, startNs: 0, bpm: 7)
        let tl2 = Timeline(epoch: e2, bar: 1, phaseCount: 1)
        let k2: Int64 = 1_000_000_000
        XCTAssertEqual(tl2.instantNs(ofBeat: k2), referenceInstant(e2, k2))
        XCTAssertEqual(tl2.beat(atOrBeforeNs: tl2.instantNs(ofBeat: k2)), k2)
    }

    func testBeforeEpochStart() {
        let e = TempoEpoch(startBeat: 0, startNs: 10_000_000_000, bpm: 120)
        let tl = Timeline(epoch: e, bar: 4, phaseCount: 1)
        XCTAssertEqual(tl.beat(atOrBeforeNs: e.startNs), 0)
        XCTAssertEqual(tl.beat(atOrBeforeNs: e.startNs - 1), -1)
        XCTAssertEqual(tl.beat(atOrBeforeNs: e.startNs - 500_000_000), -1)
        XCTAssertEqual(tl.beat(atOrBeforeNs: e.startNs - 500_000_001), -2)
        XCTAssertEqual(tl.nextBeat(afterNs: e.startNs - 1), 0)
    }

    func testPhasesBarAndDownbeats() {
        let tl = Timeline(
            epoch: TempoEpoch(startBeat: 0, startNs: 0, bpm: 120), bar: 8, phaseCount: 3)
        let names = ["plan", "work", "review"]
        let expected = ["plan", "plan", "plan", "work", "work", "work", "review", "review"]
        for bar in [0, 1, 17, 1_000_000] as [Int64] {
            for i in 0..<8 {
                let k = bar * 8 + Int64(i)
                XCTAssertEqual(names[tl.phaseIndex(k)], expected[i], "k \(k)")
                XCTAssertEqual(tl.isDownbeat(k), i == 0, "k \(k)")
                XCTAssertEqual(tl.barStart(k), bar * 8, "k \(k)")
                XCTAssertEqual(tl.nextDownbeat(atOrAfter: k), i == 0 ? k : (bar + 1) * 8, "k \(k)")
            }
        }
    }

    func testTempoChangeAtDownbeat() throws {
        var rng = SeededRNG.fromEnvironment()
        for _ in 0..<500 {
            let e = TempoEpoch(
                startBeat: Int64.random(in: 0...1_000_000, using: &rng),
                startNs: Int64.random(
                    in: 1_700_000_000_000_000_000...1_800_000_000_000_000_000, using: &rng),
                bpm: Int64.random(in: 10...600, using: &rng))
            let bar = Int.random(in: 1...16, using: &rng)
            let old = Timeline(epoch: e, bar: bar, phaseCount: 1)
            let d = old.nextDownbeat(
                atOrAfter: e.startBeat + 1 + Int64.random(in: 0...10_000, using: &rng))
            let newBpm = e.bpm + Int64.random(in: -(e.bpm / 10)...(e.bpm / 10), using: &rng)
            var tl = old
            try tl.schedule(change: TempoChange(atBeat: d, bpm: newBpm))
            let ctx = "epoch \(e) bar \(bar) D \(d) new \(newBpm) \(rng.tag)"
            XCTAssertEqual(tl.pending, TempoChange(atBeat: d, bpm: newBpm), ctx)
            let dNs = old.instantNs(ofBeat: d)
            XCTAssertEqual(tl.pendingEpoch, TempoEpoch(startBeat: d, startNs: dNs, bpm: newBpm), ctx)
            let newEpoch = TempoEpoch(startBeat: d, startNs: dNs, bpm: newBpm)
            var previous = Int64.min
            for k in max(e.startBeat, d - 3 * Int64(bar))...(d + 3 * Int64(bar)) {
                let t = tl.instantNs(ofBeat: k)
                if k <= d {
                    XCTAssertEqual(t, old.instantNs(ofBeat: k), "k \(k) \(ctx)")
                } else {
                    XCTAssertEqual(t, referenceInstant(newEpoch, k), "k \(k) \(ctx)")
                }
                XCTAssertGreaterThan(t, previous, "k \(k) \(ctx)")
                previous = t
                // Indices never repeat or jump: the inverse is exact across D.
                XCTAssertEqual(tl.beat(atOrBeforeNs: t), k, "k \(k) \(ctx)")
                XCTAssertEqual(tl.beat(atOrBeforeNs: t - 1), k - 1, "k \(k) \(ctx)")
            }
            // Far beyond D the new tempo rules.
            let far = d + 1_000_000
            XCTAssertEqual(tl.instantNs(ofBeat: far), referenceInstant(newEpoch, far), ctx)
            // Applying the change keeps the mapping.
            var applied = tl
            XCTAssertFalse(applied.applyDue(beat: d - 1), ctx)
            XCTAssertNotNil(applied.pending, ctx)
            XCTAssertTrue(applied.applyDue(beat: d), ctx)
            XCTAssertNil(applied.pending, ctx)
            XCTAssertEqual(applied.epoch, newEpoch, ctx)
            for k in [d, d + 1, far] {
                XCTAssertEqual(applied.instantNs(ofBeat: k), tl.instantNs(ofBeat: k), ctx)
            }
        }
    }

    func testScheduleRejectsInvalidChanges() throws {
        var tl = Timeline(epoch: TempoEpoch(startBeat: 16, startNs: 0, bpm: 120), bar: 8, phaseCount: 1)
        XCTAssertThrowsError(try tl.schedule(change: TempoChange(atBeat: 33, bpm: 125))) {
            XCTAssertEqual($0 as? TimelineError, .notADownbeat(atBeat: 33))
        }
        XCTAssertThrowsError(try tl.schedule(change: TempoChange(atBeat: 16, bpm: 125))) {
            XCTAssertEqual($0 as? TimelineError, .notAfterEpochStart(atBeat: 16, epochStartBeat: 16))
        }
        XCTAssertThrowsError(try tl.schedule(change: TempoChange(atBeat: 32, bpm: 0))) {
            XCTAssertEqual($0 as? TimelineError, .invalidBpm(0))
        }
        XCTAssertNil(tl.pending)
        try tl.schedule(change: TempoChange(atBeat: 32, bpm: 125))
        XCTAssertThrowsError(try tl.schedule(change: TempoChange(atBeat: 40, bpm: 130))) {
            XCTAssertEqual($0 as? TimelineError, .changeAlreadyPending(TempoChange(atBeat: 32, bpm: 125)))
        }
        tl.cancelPending()
        XCTAssertNil(tl.pending)
        XCTAssertEqual(tl.instantNs(ofBeat: 40), 12_000_000_000)
    }

    func testBootstrapEpochIsNextWholeSecond() {
        var rng = SeededRNG.fromEnvironment()
        for _ in 0..<10_000 {
            let now = Int64.random(in: 1_600_000_000_000_000_000...1_900_000_000_000_000_000, using: &rng)
            let e = Timeline.bootstrapEpoch(nowNs: now, bpm: 120)
            XCTAssertEqual(e.startBeat, 0, rng.tag)
            XCTAssertEqual(e.bpm, 120, rng.tag)
            XCTAssertEqual(e.startNs % 1_000_000_000, 0, "now \(now) \(rng.tag)")
            XCTAssertGreaterThan(e.startNs, now, "now \(now) \(rng.tag)")
            XCTAssertLessThanOrEqual(e.startNs - now, 1_000_000_000, "now \(now) \(rng.tag)")
        }
        let whole: Int64 = 1_756_987_200_000_000_000
        XCTAssertEqual(Timeline.bootstrapEpoch(nowNs: whole, bpm: 60).startNs, whole + 1_000_000_000)
        XCTAssertEqual(Timeline.bootstrapEpoch(nowNs: whole - 1, bpm: 60).startNs, whole)
    }

    func testWholeMillisecondInstantsAt120And600Bpm() {
        var rng = SeededRNG.fromEnvironment()
        for bpm: Int64 in [120, 600] {
            let e = Timeline.bootstrapEpoch(nowNs: 1_756_987_199_123_456_789, bpm: bpm)
            XCTAssertEqual(e.startNs, 1_756_987_200_000_000_000)
            let tl = Timeline(epoch: e, bar: 8, phaseCount: 3)
            XCTAssertEqual(tl.periodNs, 60_000_000_000 / bpm)
            for _ in 0..<10_000 {
                let k = rng.logUniform(10_000_000_000)
                let t = tl.instantNs(ofBeat: k)
                XCTAssertEqual(t % 1_000_000, 0, "bpm \(bpm) k \(k) \(rng.tag)")
                XCTAssertEqual(t, e.startNs + k * (60_000_000_000 / bpm), "bpm \(bpm) k \(k) \(rng.tag)")
                XCTAssertEqual(tl.deadlineUnixMs(ofBeat: k) * 1_000_000, tl.instantNs(ofBeat: k + 1))
            }
        }
    }
}
