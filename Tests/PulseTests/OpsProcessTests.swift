// Operator conventions against the real binary: SIGHUP reloads (log level
// from -config) without exiting or dropping a beat; the build is on /metrics.
import Foundation
import Glibc
import XCTest

@testable import Pulse

final class OpsProcessTests: XCTestCase {
    func testSighupNeitherExitsNorDropsABeat() throws {
        let nats = try NatsServer()
        let dir = Harness.tempDir("sighup")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/pulse.env"
        try "BACKBEAT_LOG_LEVEL=info\nBACKBEAT_BPM=300\n".write(toFile: file, atomically: true, encoding: .utf8)
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.hup.beat")
        let adminPort = Harness.freePort()
        let node = try PulseProcess(
            arguments: [
                "-config", file, "-bootstrap", "-max-bpm", "600", "-cluster", "hup", "-node-id", "n1", "-nats",
                nats.url, "-data-dir", dir + "/data", "-admin-port", "\(adminPort)",
            ], logPath: dir + "/node.log")
        XCTAssertTrue(subscriber.wait(for: 3, seconds: 10), node.log)
        // Five SIGHUPs, 150 ms apart, between and across beats (200 ms period).
        try "BACKBEAT_LOG_LEVEL=debug\nBACKBEAT_BPM=300\n".write(toFile: file, atomically: true, encoding: .utf8)
        for _ in 0..<5 {
            node.signal(SIGHUP)
            usleep(150_000)
        }
        let before = subscriber.count
        XCTAssertTrue(subscriber.wait(for: before + 5, seconds: 5), node.log)
        XCTAssertTrue(node.process.isRunning, "SIGHUP must not stop the node: \(node.log)")
        XCTAssertTrue(node.log.contains("SIGHUP: log level set level=debug"), node.log)

        let metrics = try RawClient(port: adminPort, timeoutMs: 2000).request(httpRequest("GET", "/metrics"))?.text ?? ""
        XCTAssertTrue(
            metrics.contains(
                "backbeat_build_info{version=\"\(BuildInfo.version)\",commit=\"\(BuildInfo.commit)\",swift=\"\(BuildInfo.swift)\"} 1"
            ), metrics)
        XCTAssertEqual(node.stop(), 0)
        // Every beat from the first received to the last, none missing or repeated.
        let indices = subscriber.received.compactMap { ($0.object["beat_index"] as? NSNumber)?.int64Value }
        XCTAssertGreaterThanOrEqual(indices.count, 8)
        for (a, b) in zip(indices, indices.dropFirst()) {
            XCTAssertEqual(b, a + 1, "beats \(indices)")
        }
        XCTAssertFalse(node.log.contains("beats missed"), node.log)
    }
}
