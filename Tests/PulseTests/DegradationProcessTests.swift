// Degradation with real processes (REQ-003): two of three nodes killed, the
// survivor keeps the committed timeline and publishes degraded frames; the
// two come back, a leader takes over and degraded frames stop, with no index
// repeated or going backwards. Also the alert rules, checked by promtool.
import Foundation
import Glibc
import XCTest

final class DegradationProcessTests: XCTestCase {
    private struct Seen {
        var index: Int64
        var degraded: Bool
        var deadlineMs: Int64
        var receivedNs: Int64
        var from: String
    }

    private func seen(_ subscriber: Subscriber) -> [Seen] {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return subscriber.received.compactMap { frame in
            let o = frame.object
            guard let index = (o["beat_index"] as? NSNumber)?.int64Value,
                let deadline = (o["deadline_at"] as? String).flatMap(formatter.date(from:)),
                let hlc = o["hlc"] as? String
            else { return nil }
            return Seen(
                index: index, degraded: o["degraded"] as? Bool ?? false,
                deadlineMs: Int64((deadline.timeIntervalSince1970 * 1000).rounded()), receivedNs: frame.receivedNs,
                from: String(hlc.split(separator: ":").last ?? ""))
        }
    }

    func testSurvivorDegradesOnTheTimelineAndYieldsToANewLeader() throws {
        let bpm: Int64 = 300  // 200 ms, a whole number of ms
        let periodMs = 60_000 / bpm
        let cluster = try ClusterProcessTests.Cluster(cluster: "degrade", bpm: Int(bpm))
        let subscriber = try Subscriber(url: cluster.nats.url, subject: "backbeat.degrade.beat")
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        XCTAssertTrue(subscriber.wait(for: 3, seconds: 10), cluster.logs)
        let survivor = (leader + 1) % 3
        for i in 0..<3 where i != survivor {
            cluster.nodes[i]?.signal(SIGKILL)
            cluster.nodes[i] = nil
        }
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { self.seen(subscriber).filter(\.degraded).count >= 5 },
            "the survivor publishes degraded frames\n\(cluster.logs)")
        XCTAssertEqual(cluster.get(survivor, "/drift")["degradation_mode"] as? Bool, true)
        let survivorMetrics = try cluster.metrics(survivor)
        XCTAssertTrue(survivorMetrics.contains("backbeat_degradation_mode 1.0"), survivorMetrics)
        XCTAssertTrue(
            survivorMetrics.contains("backbeat_hot_path_allocated_bytes_total 0"), "degraded beats allocate nothing")
        let readiness = try XCTUnwrap(
            try RawClient(port: cluster.adminPorts[survivor]).request(httpRequest("GET", "/ready")))
        XCTAssertEqual(readiness.status, 200, "a degraded node still serves beats")
        let before = seen(subscriber)
        let reference = try XCTUnwrap(before.first)
        for frame in before where frame.degraded {
            // Same timeline: deadlines sit whole periods after the leader's frames.
            XCTAssertEqual(frame.deadlineMs - reference.deadlineMs, (frame.index - reference.index) * periodMs)
            // Published in its turn: (1 + rank) × 20 ms after the instant on
            // the lowest voter's clock, within half a turn (20-70 ms after it).
            let instantNs = (frame.deadlineMs - periodMs) * 1_000_000
            XCTAssertLessThan(abs(frame.receivedNs - instantNs), 90_000_000, "beat \(frame.index)")
        }
        // Bring the two back: a leader takes over and degraded frames stop.
        for i in 0..<3 where i != survivor { try cluster.start(i) }
        XCTAssertNotNil(cluster.leader(seconds: 15), cluster.logs)
        let count = subscriber.count
        XCTAssertTrue(subscriber.wait(for: count + 10, seconds: 15), cluster.logs)
        let all = seen(subscriber)
        for (a, b) in zip(all, all.dropFirst()) {
            XCTAssertGreaterThan(b.index, a.index, "index \(b.index) after \(a.index)\n\(cluster.logs)")
        }
        let lastDegraded = try XCTUnwrap(all.lastIndex { $0.degraded })
        XCTAssertGreaterThan(all.count - lastDegraded - 1, 5, "normal frames follow and stay normal")
        XCTAssertFalse(all.suffix(5).contains { $0.degraded })
        XCTAssertEqual(cluster.get(survivor, "/drift")["degradation_mode"] as? Bool, false)
    }

    func testAlertRulesPassPromtool() throws {
        let tool = try XCTUnwrap(
            ["/usr/bin/promtool", "/usr/local/bin/promtool"].first { FileManager.default.isExecutableFile(atPath: $0) },
            "promtool (Debian package prometheus) must be installed")
        var root = URL(fileURLWithPath: #filePath)
        while !FileManager.default.fileExists(atPath: root.appendingPathComponent("Package.swift").path) {
            root.deleteLastPathComponent()
        }
        let dir = root.appendingPathComponent("deploy/prometheus")
        for arguments in [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: tool)
            process.arguments = arguments
            process.currentDirectoryURL = dir
            let output = Pipe()
            process.standardOutput = output
            process.standardError = output
            try process.run()
            process.waitUntilExit()
            let said = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            XCTAssertEqual(process.terminationStatus, 0, "\(arguments): \(said)")
        }
    }
}
