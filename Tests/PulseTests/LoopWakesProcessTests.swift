// What wakes the loop thread of a single node (issue 24), counted by the
// node itself (`backbeat_loop_wakes_total`): in timer-only mode about one
// wake per beat, in spin mode the echo's wake besides.
import Foundation
import XCTest

final class LoopWakesProcessTests: XCTestCase {
    /// Loop wakes, beats and delivery samples counted over `seconds` of a
    /// single node in steady state, and whether every frame held the contract.
    private func measure(extra: [String], cluster: String, seconds: Double = 6) throws -> (
        wakesPerBeat: Double, beats: Double, deliverySamples: Double, hotPathBytes: Double, failures: [String],
        log: String
    ) {
        let nats = try NatsServer()
        let dir = Harness.tempDir("wakes-\(cluster)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.\(cluster).beat")
        let adminPort = Harness.freePort()
        let node = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", cluster, "-node-id", "node-wake",
                "-nats", nats.url, "-data-dir", dir + "/data", "-admin-port", "\(adminPort)",
            ] + extra, logPath: dir + "/node.log")
        defer { _ = node.stop() }
        XCTAssertTrue(subscriber.wait(for: 15, seconds: 10), node.log)
        func scrape() throws -> (wakes: Double, beats: Double, delivery: Double, hotPathBytes: Double) {
            let text = try RawClient(port: adminPort, timeoutMs: 2000).request(httpRequest("GET", "/metrics"))?.text
            let metrics = try XCTUnwrap(text, "GET /metrics")
            return (
                try XCTUnwrap(NatsProcessSupport.metric("backbeat_loop_wakes_total", in: metrics)),
                try XCTUnwrap(NatsProcessSupport.metric("backbeat_beats_total", in: metrics)),
                try XCTUnwrap(NatsProcessSupport.metric("backbeat_beat_delivery_latency_seconds_count", in: metrics)),
                try XCTUnwrap(NatsProcessSupport.metric("backbeat_hot_path_allocated_bytes_total", in: metrics))
            )
        }
        let before = try scrape()
        Thread.sleep(forTimeInterval: seconds)
        let after = try scrape()
        let epoch = try ContractEpoch.load(adminPort: adminPort)
        let failures = FrameChecker(epoch: epoch, phases: ["plan", "work", "review"], nodeId: "node-wake")
            .check(subscriber.received)
        let beats = after.beats - before.beats
        return (
            (after.wakes - before.wakes) / max(beats, 1), beats, after.delivery - before.delivery, after.hotPathBytes,
            failures, node.log
        )
    }

    /// Timer-only mode: the echo of the node's own frame is read at its
    /// beat's turn (NatsLink.deferReads), its housekeeping, admin sweep and
    /// Raft ticks run at the end of beat turns (EventLoop.armCoalescing),
    /// and a link that carries frames sends no pings: about one wake per
    /// beat (the scrapes and an idle requests link's PONG add a few), every
    /// frame still by the contract, and no delivery sample taken from an
    /// echo read a turn late.
    func testTimerOnlyNodeWakesAboutOncePerBeat() throws {
        let run = try measure(extra: ["-spin-max-us", "0"], cluster: "wakes-timer")
        XCTAssertGreaterThanOrEqual(run.beats, 45, run.log)
        XCTAssertLessThanOrEqual(run.wakesPerBeat, 1.4, "loop wakes per beat\n\(run.log)")
        XCTAssertEqual(run.deliverySamples, 0, "no delivery sample from a deferred echo")
        XCTAssertEqual(run.hotPathBytes, 0, "the beat path allocates nothing with deferred reads either")
        XCTAssertEqual(run.failures, [], run.log)
    }

    /// Spin mode reads its echo as it arrives: a second wake per beat, and
    /// a delivery sample from each echo. (The measure above can fail.)
    func testSpinModeNodeWakesForItsEcho() throws {
        let run = try measure(extra: [], cluster: "wakes-spin")
        XCTAssertGreaterThanOrEqual(run.beats, 45, run.log)
        XCTAssertGreaterThanOrEqual(run.wakesPerBeat, 1.8, "loop wakes per beat\n\(run.log)")
        XCTAssertGreaterThanOrEqual(run.deliverySamples, run.beats - 2, "a delivery sample per echo")
        XCTAssertEqual(run.failures, [], run.log)
    }
}
