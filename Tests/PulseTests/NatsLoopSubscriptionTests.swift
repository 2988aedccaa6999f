// The beat subject read on the loop thread (NatsLoopSubscription): a
// foreign publisher's frame reaches the handler on the loop thread in the
// wake that read it, and a flood on the subject is bounded per wake (at most
// `maxPerWake` handler calls) and fully accounted: every message is either
// handed over, dropped over the wake's budget, or dropped by the client at
// its pending limit, each drop counted in RejectedInput. A real nats-server.
import CLoop
import CNats
import Foundation
import Logging
import XCTest

@testable import Pulse

final class NatsLoopSubscriptionTests: XCTestCase {
    func testForeignFramesAreReadOnTheLoopAndAFloodIsBoundedPerWakeAndCounted() throws {
        let nats = try NatsServer()
        let loop = try EventLoop()
        loop.bindToCurrentThread()
        let link = NatsLink(url: nats.url, name: "loop-sub-test", loop: loop, logger: Logger(label: "test"))
        let rejected = RejectedInput()
        let limits = PulseNode.beatSubjectLimits
        XCTAssertEqual(limits.maxPerWake, 32)
        var handledThisTurn = 0
        var offLoop = 0
        var seen: [String] = []
        let subscription = link.subscribeOnLoop(
            subject: "backbeat.loopsub.beat", limits: limits, rejected: rejected, surface: .beatSubject
        ) { payload, receivedNs in
            handledThisTurn += 1
            if !loop.onLoopThread || receivedNs <= 0 { offLoop += 1 }
            if payload.count < 64 { seen.append(String(decoding: payload, as: UTF8.self)) }
        }
        try link.start()
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                loop.turn(timeoutNs: 10_000_000)
                return link.isConnected
            }, "connected to nats-server")
        let publisher = try NatsTestPublisher(url: nats.url)

        // A foreign publisher's frame arrives (retry until the SUB reached the server).
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                publisher.publish("backbeat.loopsub.beat", Array("foreign-0".utf8))
                publisher.flush()
                for _ in 0..<5 { loop.turn(timeoutNs: 10_000_000) }
                return seen.contains("foreign-0")
            }, "a foreign frame reached the loop")
        for _ in 0..<10 { loop.turn(timeoutNs: 1_000_000) }  // stragglers of the retries
        XCTAssertEqual(offLoop, 0, "handled on the loop thread, with a receive time")
        XCTAssertEqual(rejected.count(.beatSubject), 0, "nothing refused without a flood")
        let base = subscription.delivered

        // The flood: frame-sized messages while the loop does not turn, so
        // that each read brings ~100 of them (the client's 32 KiB buffer).
        let flood = 3000
        let frame = [UInt8](repeating: UInt8(ascii: "x"), count: 270)
        for _ in 0..<flood { publisher.publish("backbeat.loopsub.beat", frame) }
        publisher.flush()
        var maxPerTurn = 0
        var turns = 0
        func accounted() -> UInt64 {
            (subscription.delivered - base) + subscription.overBudget + subscription.pendingLimitDrops
        }
        XCTAssertTrue(
            Harness.waitUntil(seconds: 20) {
                handledThisTurn = 0
                loop.turn(timeoutNs: 10_000_000)
                turns += 1
                maxPerTurn = max(maxPerTurn, handledThisTurn)
                return accounted() >= UInt64(flood)
            }, "accounted \(accounted()) of \(flood)")
        XCTAssertEqual(accounted(), UInt64(flood), "every message handed over or counted as dropped")
        XCTAssertLessThanOrEqual(maxPerTurn, limits.maxPerWake, "bounded work per wake")
        XCTAssertGreaterThan(subscription.overBudget, 0, "reads brought more than a wake's budget")
        XCTAssertGreaterThan(subscription.pendingLimitDrops, 0, "reads brought more than the pending limit")
        XCTAssertEqual(rejected.count(.beatSubject, reason: "over_wake_budget"), subscription.overBudget)
        XCTAssertEqual(rejected.count(.beatSubject, reason: "pending_limit"), subscription.pendingLimitDrops)
        XCTAssertEqual(rejected.count(.beatSubject), subscription.overBudget + subscription.pendingLimitDrops)
        XCTAssertLessThanOrEqual(
            subscription.delivered - base, UInt64(turns * limits.maxPerWake), "handed over within the budget")

        // The loop is not stalled: the next foreign frame is read in its wake.
        publisher.publish("backbeat.loopsub.beat", Array("foreign-1".utf8))
        publisher.flush()
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) {
                loop.turn(timeoutNs: 10_000_000)
                return seen.contains("foreign-1")
            }, "a frame after the flood is read")
        XCTAssertEqual(offLoop, 0)
        link.close()
    }
}
