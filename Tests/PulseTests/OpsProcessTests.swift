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
        // A storm: the files are read off the loop, one reload at a time, so
        // signals during a reload collapse into one more (no queue builds up).
        for _ in 0..<300 { node.signal(SIGHUP) }
        let before = subscriber.count
        XCTAssertTrue(subscriber.wait(for: before + 5, seconds: 5), node.log)
        XCTAssertTrue(node.process.isRunning, "SIGHUP must not stop the node: \(node.log)")
        XCTAssertTrue(node.log.contains("SIGHUP: log level set level=debug"), node.log)

        let metrics =
            try RawClient(port: adminPort, timeoutMs: 2000).request(httpRequest("GET", "/metrics"))?.text ?? ""
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

    /// Two nodes named `localhost`, a third whose name never resolves
    /// (`.invalid`, RFC 6761): the two elect a leader and publish every beat,
    /// and the loop stays responsive while the third's lookups fail.
    func testPeersByDnsName() throws {
        let nats = try NatsServer()
        let dir = Harness.tempDir("dns")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let raft = (0..<3).map { _ in Harness.freePort() }
        let admin = (0..<2).map { _ in Harness.freePort() }
        let peers = "n1@localhost:\(raft[0]),n2@localhost:\(raft[1]),n3@pulse-gone.invalid:\(raft[2])"
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.dns.beat")
        let nodes = try (0..<2).map { i in
            try PulseProcess(
                arguments: [
                    "-bootstrap", "-bpm", "300", "-max-bpm", "600", "-cluster", "dns", "-node-id", "n\(i + 1)",
                    "-raft-bind", "127.0.0.1:\(raft[i])", "-peers", peers, "-nats", nats.url, "-data-dir",
                    "\(dir)/n\(i + 1)", "-admin-port", "\(admin[i])",
                ], logPath: "\(dir)/n\(i + 1).log")
        }
        let logs = { nodes.map(\.log).joined(separator: "\n---\n") }
        XCTAssertTrue(subscriber.wait(for: 6, seconds: 20), logs())
        for i in 0..<2 {
            XCTAssertTrue(nodes[i].log.contains("raft: peer resolved"), logs())
            XCTAssertTrue(nodes[i].log.contains("address=127.0.0.1:\(raft[1 - i])"), logs())
            XCTAssertTrue(nodes[i].log.contains("raft: peer name does not resolve"), logs())
            // /live answers fast while lookups of the dead name go on.
            let started = Date()
            let live = try RawClient(port: admin[i], timeoutMs: 2000).request(httpRequest("GET", "/live"))
            XCTAssertEqual(live?.status, 200)
            XCTAssertLessThan(Date().timeIntervalSince(started), 0.5)
        }
        let indices = subscriber.received.compactMap { ($0.object["beat_index"] as? NSNumber)?.int64Value }
        for (a, b) in zip(indices, indices.dropFirst()) { XCTAssertEqual(b, a + 1, "\(indices)") }
        for node in nodes { XCTAssertEqual(node.stop(), 0) }
    }
}
