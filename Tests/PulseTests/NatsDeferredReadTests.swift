// The beat link's reads at the loop's turns and its own pings (issue 24),
// against a real nats-server: with reads deferred, a message on the beat
// subject wakes nothing and is handed over at the end of the next turn
// (flagged `readingDeferred`); reads on arrival wake the loop as before; a
// hang-up still wakes it; an idle link pings by itself and stays up.
import CLoop
import CNats
import Foundation
import Logging
import XCTest

@testable import Pulse

final class NatsDeferredReadTests: XCTestCase {
    func testDeferredReadsWakeNothingAndAreReadAtTheNextTurn() throws {
        let nats = try NatsServer()
        let loop = try EventLoop()
        loop.bindToCurrentThread()
        let link = NatsLink(url: nats.url, name: "deferred-test", loop: loop, logger: Logger(label: "test"))
        var seen: [(text: String, deferred: Bool)] = []
        link.subscribeOnLoop(
            subject: "backbeat.deferred.beat", limits: PulseNode.beatSubjectLimits, rejected: RejectedInput(),
            surface: .beatSubject
        ) { payload, _ in
            seen.append((String(decoding: payload, as: UTF8.self), link.readingDeferred))
        }
        try link.start()
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                loop.turn(timeoutNs: 10_000_000)
                return link.isConnected
            }, "connected")
        let publisher = try NatsTestPublisher(url: nats.url)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                publisher.publish("backbeat.deferred.beat", "ready")
                for _ in 0..<5 { loop.turn(timeoutNs: 10_000_000) }
                return seen.contains { $0.text == "ready" }
            }, "subscribed")
        for _ in 0..<10 { loop.turn(timeoutNs: 1_000_000) }

        // Deferred: the message arrives while the loop waits; the wait is not
        // cut short, and the message is handed over at the end of that turn.
        link.deferReads(true)
        seen.removeAll()
        let wakes = loop.wakes
        publisher.publish("backbeat.deferred.beat", "late")
        Thread.sleep(forTimeInterval: 0.05)  // it is in the socket now
        let started = cloop_monotonic_ns()
        loop.turn(timeoutNs: 200_000_000)
        XCTAssertGreaterThanOrEqual(cloop_monotonic_ns() - started, 190_000_000, "the wait ran its full length")
        XCTAssertEqual(loop.wakes, wakes, "no wake for the message")
        XCTAssertEqual(seen.map(\.text), ["late"], "read at the end of the turn")
        XCTAssertEqual(seen.first?.deferred, true, "flagged as read late")

        // On arrival again: the message wakes the loop.
        link.deferReads(false)
        seen.removeAll()
        publisher.publish("backbeat.deferred.beat", "prompt")
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) {
                loop.turn(timeoutNs: 1_000_000_000)
                return !seen.isEmpty
            })
        XCTAssertGreaterThan(loop.wakes, wakes, "the message woke the loop")
        XCTAssertEqual(seen.first?.deferred, false)

        // Deferred again: the server going away still wakes the loop at once.
        link.deferReads(true)
        let beforeHangUp = loop.wakes
        nats.stop()
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) {
                loop.turn(timeoutNs: 1_000_000_000)
                return !link.isConnected
            }, "the hang-up was read")
        XCTAssertGreaterThan(loop.wakes, beforeHangUp, "a hang-up wakes the loop while reads are deferred")
        link.close()
    }

    /// With no traffic, the link writes its own PING every `pingIntervalMs`
    /// of silence at whatever turn notices it; the server's PONG keeps it up.
    func testAnIdleLinkPingsOnSilenceAndStaysUp() throws {
        let nats = try NatsServer()
        let (loop, link) = try Harness.connectedLink(url: nats.url, name: "ping-test")
        let pingsBefore = link.stats.ownPings
        let deadline = cloop_monotonic_ns() + 2_300_000_000
        while cloop_monotonic_ns() < deadline { loop.turn(timeoutNs: 50_000_000) }
        let pings = link.stats.ownPings - pingsBefore
        XCTAssertGreaterThanOrEqual(pings, 3, "a PING per 500 ms of silence")
        XCTAssertLessThanOrEqual(pings, 5, "not more often")
        XCTAssertEqual(link.stats.staleAborts, 0, "the PONGs count as inbound")
        XCTAssertTrue(link.isConnected)
        // A silent server (stopped): no PONG, so the link is dropped after
        // three intervals of silence.
        nats.pause(true)
        defer { nats.pause(false) }
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) {
                loop.turn(timeoutNs: 50_000_000)
                return link.stats.staleAborts > 0
            }, "a silent server is dropped")
        link.close()
    }
}
