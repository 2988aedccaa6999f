// A BeatDriver at 6000 bpm (a beat every 10 ms) on a real loop and a real
// nats-server, fired by its own timer: the setup the allocation and the
// TX-timestamp tests share.
import CLoop
import Logging
import PulseCore
import XCTest

@testable import Pulse

struct TimerDrivenBeats {
    let nats: NatsServer
    let subscriber: Subscriber
    let loop: EventLoop
    let link: NatsLink
    let driver: BeatDriver

    /// Connects (10 s at most) and starts the driver two seconds into a bootstrapped timeline.
    init(cluster: String) throws {
        nats = try NatsServer()
        subscriber = try Subscriber(url: nats.url, subject: "backbeat.\(cluster).beat")
        loop = try EventLoop()
        loop.bindToCurrentThread()
        let logger = Logger(label: "test")
        link = NatsLink(url: nats.url, name: "\(cluster)-test", loop: loop, logger: logger)
        try link.start()
        let (loop, link) = (self.loop, self.link)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                loop.turn(timeoutNs: 10_000_000)
                return link.isConnected
            })
        let epoch = Timeline.bootstrapEpoch(nowNs: cloop_realtime_ns() - 2_000_000_000, bpm: 6000)
        driver = try BeatDriver(
            loop: loop, nats: link, logger: logger, timeline: Timeline(epoch: epoch, bar: 8, phaseCount: 3),
            placeholder: Timeline(epoch: epoch, bar: 8, phaseCount: 3),
            clusterId: cluster, phases: ["plan", "work", "review"], nodeId: "node-0001",
            subject: "backbeat.\(cluster).beat", maxOffsetMs: 500, spinMaxUs: 500)
        driver.start()
    }

    /// Turns the loop until `beats` were published (10 s at most), then stops the driver.
    func run(beats: UInt64) {
        let deadline = cloop_monotonic_ns() + 10_000_000_000
        while driver.stats.beatsPublished < beats && cloop_monotonic_ns() < deadline {
            loop.turn(timeoutNs: 5_000_000)
        }
        driver.stop()
    }
}
