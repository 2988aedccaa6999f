// Beat frames are written to the NATS socket by the loop itself when the
// client has nothing buffered (issue 24); everything else goes through the
// client. Under a burst that fills the socket (partial writes, would-block),
// mixed with the client's own publishes and its pings, the server must see
// one whole protocol stream: every message arrives, intact and in order, on
// the same connection.
import CLoop
import Foundation
import XCTest

@testable import Pulse

final class DirectWriteTests: XCTestCase {
    func testBurstOfDirectAndClientWritesArrivesWholeAndInOrder() throws {
        let nats = try NatsServer()
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.direct.beat")
        let (loop, link) = try Harness.connectedLink(url: nats.url, name: "direct-test")
        let count = 8_000
        let padding = String(repeating: "x", count: 4000)  // 20 MB while paused: more than the socket buffers hold
        var published = 0
        // The server reads nothing for the first part of the burst (under a
        // second: the link's silence limit is 1.5 s), so the socket fills.
        nats.pause(true)
        let resumeAt = 5_000
        "backbeat.direct.beat".withCString { subject in
            for i in 0..<count {
                if i == resumeAt { nats.pause(false) }
                if i % 97 == 0 {
                    // The client's own path between direct writes.
                    if link.publish(subject: "backbeat.direct.beat", payload: Data("\(i) \(padding)".utf8)) {
                        published += 1
                    }
                } else {
                    let text = Array("\(i) \(padding)".utf8)
                    if text.withUnsafeBytes({ link.publish(subject: subject, bytes: $0.baseAddress!, length: $0.count) }
                    ) {
                        published += 1
                    }
                }
                if i % 500 == 0 { loop.turn(timeoutNs: 0) }  // let the loop write and read a little
            }
        }
        XCTAssertEqual(published, count, "every publish was taken")
        XCTAssertTrue(
            Harness.waitUntil(seconds: 30) {
                loop.turn(timeoutNs: 1_000_000)
                return subscriber.count >= count
            }, "received \(subscriber.count) of \(count)")
        let received = subscriber.received
        XCTAssertEqual(received.count, count)
        var inOrder = 0
        for (i, frame) in received.enumerated() where frame.text == "\(i) \(padding)" { inOrder += 1 }
        XCTAssertEqual(inOrder, count, "every message intact and in publish order")
        XCTAssertEqual(link.stats.attaches, 1, "one connection throughout (the server saw no protocol error)")
        XCTAssertEqual(link.stats.publishErrors, 0)
        // Direct until the socket filled; then the client's buffer held the
        // rest (and the tail of a partial write went out first).
        XCTAssertGreaterThan(link.stats.directFrames, 0, "beat frames went the direct way")
        XCTAssertGreaterThan(
            link.stats.directPartial + link.stats.directWouldBlock, 0,
            "the burst filled the socket (partial writes or would-block), the case under test")
        link.close()
    }
}
