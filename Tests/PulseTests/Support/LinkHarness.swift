// A NatsLink on a loop bound to the test's thread, connected to a real
// nats-server: the set-up of the tests that drive the link or the beat
// driver by hand.
import Logging
import XCTest

@testable import Pulse

extension Harness {
    /// A loop bound to the calling thread and a NatsLink on it (`role`), connected to
    /// `url` (the loop turned until it is, at most 10 s).
    static func connectedLink(url: String, name: String, role: NatsLinkRole = .beat) throws -> (EventLoop, NatsLink) {
        let loop = try EventLoop()
        loop.bindToCurrentThread()
        let link = NatsLink(url: url, name: name, loop: loop, logger: Logger(label: "test"), role: role)
        try link.start()
        XCTAssertTrue(
            waitUntil(seconds: 10) {
                loop.turn(timeoutNs: 10_000_000)
                return link.isConnected
            }, "connected to nats-server")
        return (loop, link)
    }
}
