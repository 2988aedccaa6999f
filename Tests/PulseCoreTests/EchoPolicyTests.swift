// EchoPolicyTests.swift — which decoded frames heard on the beat subject may
// move a node's state: this cluster, a known publisher, a current term, an
// index within one beat of the timeline's current beat. Everything else is
// refused with its reason; nothing traps on any index or term.

import XCTest

@testable import PulseCore

final class EchoPolicyTests: XCTestCase {
    /// 300 bpm: a 200 ms period.
    private let timeline = Timeline(
        epoch: TempoEpoch(startBeat: 0, startNs: 1_756_987_200_000_000_000, bpm: 300), bar: 8, phaseCount: 1)

    private func frame(
        index: Int64, cluster: String = "c1", suffix: String = "ab-1", term: UInt64 = 1, degraded: Bool = false
    ) -> DecodedBeatFrame {
        DecodedBeatFrame(
            clusterId: cluster, beatIndex: index, downbeat: index % 8 == 0, phase: "p",
            hlc: HLCStamp(wallMs: 1_756_987_200_000, counter: 0), hlcSuffix: suffix, deadlineUnixMs: 0, tempoBpm: 300,
            windowId: String(repeating: "0", count: 32), term: term, degraded: degraded)
    }

    /// 5 ms after beat 100's instant: the current beat is 100.
    private var now: Int64 { timeline.instantNs(ofBeat: 100) + 5_000_000 }

    func testSingleNodeAcceptsItsOwnFramesWithinOneBeat() {
        var policy = EchoPolicy.singleNode(clusterId: "c1", ownSuffix: "ab-1")
        for index: Int64 in [99, 100, 101] {
            XCTAssertEqual(
                policy.judge(frame(index: index), timeline: timeline, atTimelineNs: now, ownTerm: 1), .accept)
        }
        let refused: [(Int64, EchoRejection)] = [
            (98, .indexBehind), (0, .indexBehind), (102, .indexAhead), (1_000_000, .indexAhead),
            (Int64.max, .indexAhead), (Int64.max - 1, .indexAhead),
        ]
        for (index, reason) in refused {
            XCTAssertEqual(
                policy.judge(frame(index: index), timeline: timeline, atTimelineNs: now, ownTerm: 1), .reject(reason),
                "\(index)")
        }
    }

    func testTheWindowFollowsTheTimelineAcrossAnInstant() {
        var policy = EchoPolicy.singleNode(clusterId: "c1", ownSuffix: "ab-1")
        let justBefore = timeline.instantNs(ofBeat: 101) - 1
        XCTAssertEqual(
            policy.judge(frame(index: 102), timeline: timeline, atTimelineNs: justBefore, ownTerm: 1),
            .reject(.indexAhead))
        XCTAssertEqual(
            policy.judge(frame(index: 102), timeline: timeline, atTimelineNs: justBefore + 1, ownTerm: 1), .accept)
        XCTAssertEqual(
            policy.judge(frame(index: 99), timeline: timeline, atTimelineNs: justBefore + 1, ownTerm: 1),
            .reject(.indexBehind))
    }

    func testOtherClustersAndUnknownPublishersAreRefused() {
        var policy = EchoPolicy.singleNode(clusterId: "c1", ownSuffix: "ab-1")
        XCTAssertEqual(
            policy.judge(frame(index: 100, cluster: "c2"), timeline: timeline, atTimelineNs: now, ownTerm: 1),
            .reject(.wrongCluster))
        XCTAssertEqual(
            policy.judge(frame(index: 100, suffix: "zz-9"), timeline: timeline, atTimelineNs: now, ownTerm: 1),
            .reject(.unknownPublisher))
        // The cluster is checked first, then the publisher, then the term, then the index.
        XCTAssertEqual(
            policy.judge(
                frame(index: Int64.max, cluster: "c2", suffix: "zz-9", term: .max), timeline: timeline,
                atTimelineNs: now, ownTerm: 1),
            .reject(.wrongCluster))
        XCTAssertEqual(
            policy.judge(
                frame(index: Int64.max, suffix: "zz-9", term: .max), timeline: timeline, atTimelineNs: now, ownTerm: 1),
            .reject(.unknownPublisher))
        XCTAssertEqual(
            policy.judge(frame(index: Int64.max, term: .max), timeline: timeline, atTimelineNs: now, ownTerm: 1),
            .reject(.termAhead))

        var cluster = EchoPolicy(clusterId: "c1", publishers: .known(["n1", "n2", "n3"]), maxTermLead: 8)
        XCTAssertEqual(
            cluster.judge(frame(index: 100, suffix: "n2"), timeline: timeline, atTimelineNs: now, ownTerm: 1), .accept)
        XCTAssertEqual(
            cluster.judge(frame(index: 100, suffix: "n4"), timeline: timeline, atTimelineNs: now, ownTerm: 1),
            .reject(.unknownPublisher))
        var open = EchoPolicy(clusterId: "c1", publishers: .any, maxTermLead: 8)
        XCTAssertEqual(
            open.judge(frame(index: 100, suffix: "anyone"), timeline: timeline, atTimelineNs: now, ownTerm: 1), .accept)
        XCTAssertEqual(
            open.judge(frame(index: 100, cluster: "c2"), timeline: timeline, atTimelineNs: now, ownTerm: 1),
            .reject(.wrongCluster))
    }

    func testTermsNeverGoBackAndCannotRunFarAhead() {
        var single = EchoPolicy.singleNode(clusterId: "c1", ownSuffix: "ab-1")
        XCTAssertEqual(
            single.judge(frame(index: 100, term: 2), timeline: timeline, atTimelineNs: now, ownTerm: 1),
            .reject(.termAhead))
        XCTAssertEqual(
            single.judge(frame(index: 100, term: .max), timeline: timeline, atTimelineNs: now, ownTerm: 1),
            .reject(.termAhead))
        XCTAssertEqual(
            single.judge(frame(index: 100, term: 1), timeline: timeline, atTimelineNs: now, ownTerm: 1), .accept)
        XCTAssertEqual(single.lastTermSeen, 1)
        XCTAssertEqual(
            single.judge(frame(index: 100, term: 0), timeline: timeline, atTimelineNs: now, ownTerm: 1),
            .reject(.termStale))

        var cluster = EchoPolicy(clusterId: "c1", publishers: .known(["ab-1"]), maxTermLead: 8)
        XCTAssertEqual(
            cluster.judge(frame(index: 100, term: 11), timeline: timeline, atTimelineNs: now, ownTerm: 3), .accept)
        XCTAssertEqual(
            cluster.judge(frame(index: 100, term: 12), timeline: timeline, atTimelineNs: now, ownTerm: 3),
            .reject(.termAhead))
        // The fence rises only to the node's own term (see the forged-frame test below).
        XCTAssertEqual(
            cluster.judge(frame(index: 100, term: 10), timeline: timeline, atTimelineNs: now, ownTerm: 3), .accept)
        XCTAssertEqual(
            cluster.judge(frame(index: 100, term: 2), timeline: timeline, atTimelineNs: now, ownTerm: 3),
            .reject(.termStale))
        XCTAssertEqual(
            cluster.judge(frame(index: 100, term: 11), timeline: timeline, atTimelineNs: now, ownTerm: 3), .accept)
        // A term near UInt64.max: the ceiling saturates instead of trapping.
        var high = EchoPolicy(clusterId: "c1", publishers: .known(["ab-1"]), maxTermLead: 8)
        XCTAssertEqual(
            high.judge(frame(index: 100, term: .max), timeline: timeline, atTimelineNs: now, ownTerm: .max - 1), .accept
        )
        // A refused frame does not move the term.
        var fresh = EchoPolicy(clusterId: "c1", publishers: .known(["ab-1"]), maxTermLead: 8)
        XCTAssertEqual(
            fresh.judge(frame(index: 500, term: 9), timeline: timeline, atTimelineNs: now, ownTerm: 3),
            .reject(.indexAhead))
        XCTAssertEqual(fresh.lastTermSeen, 0)
    }

    /// Random frames and times: the policy never traps, and whatever it
    /// accepts is of this cluster, a known publisher and within one beat.
    func testRandomFramesAcceptedOnlyWithinTheWindow() {
        var rng = SeededRNG.fromEnvironment()
        var policy = EchoPolicy(clusterId: "c1", publishers: .known(["ab-1", "cd-2"]), maxTermLead: 8)
        for _ in 0..<20_000 {
            let t = Int64.random(in: timeline.instantNs(ofBeat: 0)...timeline.instantNs(ofBeat: 1_000_000), using: &rng)
            let current = timeline.beat(atOrBeforeNs: t)
            let index: Int64 =
                Bool.random(using: &rng)
                ? max(0, current + Int64.random(in: -3...3, using: &rng)) : Int64.random(in: 0...Int64.max, using: &rng)
            let f = frame(
                index: index, cluster: ["c1", "c2"].randomElement(using: &rng)!,
                suffix: ["ab-1", "cd-2", "ef-3"].randomElement(using: &rng)!,
                term: Bool.random(using: &rng)
                    ? UInt64.random(in: 0...12, using: &rng) : .random(in: 0...UInt64.max, using: &rng))
            let ownTerm = UInt64.random(in: 0...4, using: &rng)
            let before = policy.lastTermSeen
            if policy.judge(f, timeline: timeline, atTimelineNs: t, ownTerm: ownTerm) == .accept {
                XCTAssertEqual(f.clusterId, "c1", "seed \(rng.seed)")
                XCTAssertNotEqual(f.hlcSuffix, "ef-3", "seed \(rng.seed)")
                XCTAssertTrue(abs(f.beatIndex - current) <= 1, "seed \(rng.seed)")
                XCTAssertTrue(f.term >= before && f.term <= ownTerm + 8, "seed \(rng.seed)")
            } else {
                XCTAssertEqual(policy.lastTermSeen, before, "seed \(rng.seed)")
            }
        }
    }

    /// A forged frame of term own + lead is accepted but must not fence out
    /// the real leader's frames of the node's own term (adversarial review).
    func testAFrameAheadOfOurTermDoesNotRaiseTheFencePastIt() {
        var policy = EchoPolicy(clusterId: "c1", publishers: .known(["ab-1", "cd-2"]), maxTermLead: 8)
        func judge(_ term: UInt64) -> EchoVerdict {
            policy.judge(frame(index: 100, term: term), timeline: timeline, atTimelineNs: now, ownTerm: 3)
        }
        XCTAssertEqual(judge(11), .accept)
        XCTAssertEqual(policy.lastTermSeen, 3)
        XCTAssertEqual(judge(3), .accept)
        XCTAssertEqual(judge(2), .reject(.termStale))
    }
}

/// The node's own frame, recognised by its bytes (issue 24), is judged on its
/// suffix, index and term exactly as the decoded frame would be: same verdict
/// and the same term fence afterwards, for every case the decoded path sees.
final class EchoPolicyOwnFrameTests: XCTestCase {
    private let timeline = Timeline(
        epoch: TempoEpoch(startBeat: 0, startNs: 1_756_987_200_000_000_000, bpm: 300), bar: 8, phaseCount: 1)

    func testJudgeOwnAgreesWithTheDecodedJudgement() {
        let now = timeline.instantNs(ofBeat: 100) + 5_000_000
        let suffixes = ["ab-1", "zz-9"]
        let indices: [Int64] = [0, 98, 99, 100, 101, 102, Int64.max]
        let terms: [UInt64] = [0, 1, 2, 3, 9, 12, UInt64.max]
        var cases = 0
        for suffix in suffixes {
            for index in indices {
                for term in terms {
                    for fence: UInt64 in [0, 2] {
                        var decoded = EchoPolicy(
                            clusterId: "c1", publishers: .known(["ab-1"]), maxTermLead: EchoPolicy.clusterTermLead)
                        if fence > 0 {  // raise the fence with an accepted frame of that term
                            let first = decodedFrame(index: 100, suffix: "ab-1", term: fence)
                            XCTAssertEqual(
                                decoded.judge(first, timeline: timeline, atTimelineNs: now, ownTerm: 3), .accept)
                        }
                        var own = decoded
                        let a = decoded.judge(
                            decodedFrame(index: index, suffix: suffix, term: term), timeline: timeline,
                            atTimelineNs: now, ownTerm: 3)
                        let b = own.judgeOwn(
                            suffix: suffix, index: index, term: term, timeline: timeline, atTimelineNs: now, ownTerm: 3)
                        XCTAssertEqual(a, b, "\(suffix) \(index) \(term) fence \(fence)")
                        XCTAssertEqual(decoded.lastTermSeen, own.lastTermSeen, "\(suffix) \(index) \(term)")
                        cases += 1
                    }
                }
            }
        }
        XCTAssertEqual(cases, 196)
    }

    private func decodedFrame(index: Int64, suffix: String, term: UInt64) -> DecodedBeatFrame {
        DecodedBeatFrame(
            clusterId: "c1", beatIndex: index, downbeat: false, phase: "p",
            hlc: HLCStamp(wallMs: 1_756_987_200_000, counter: 0), hlcSuffix: suffix, deadlineUnixMs: 0, tempoBpm: 300,
            windowId: String(repeating: "0", count: 32), term: term, degraded: false)
    }
}
