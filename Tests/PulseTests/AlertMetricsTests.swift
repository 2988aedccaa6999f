// The alert rules against reality: every metric an alert in
// deploy/prometheus/alerts.yml reads is exported by a live clustered node
// (so no alert silently watches a series that does not exist), with values
// that mean what the rules assume; and the `process_*` series parsed from
// /proc, including a command name with spaces and parentheses.
import Foundation
import XCTest

@testable import Pulse

final class AlertMetricsTests: XCTestCase {
    /// Metric names the alert expressions read (`up` is Prometheus's own).
    static func alertMetricNames() throws -> Set<String> {
        let rules = try String(
            contentsOf: DeployTests.repoRoot.appendingPathComponent("deploy/prometheus/alerts.yml"), encoding: .utf8)
        var names: Set<String> = []
        for line in rules.split(separator: "\n") where line.trimmingCharacters(in: .whitespaces).hasPrefix("expr:") {
            let regex = try NSRegularExpression(pattern: "\\b(backbeat_[a-z_]+|process_[a-z_]+)")
            let text = String(line)
            for match in regex.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
                var name = String(text[Range(match.range, in: text)!])
                for suffix in ["_bucket", "_count", "_sum"] where name.hasSuffix(suffix) {
                    name = String(name.dropLast(suffix.count))
                }
                names.insert(name)
            }
        }
        return names
    }

    func testEveryMetricAnAlertReadsIsExportedByAClusteredNode() throws {
        let names = try Self.alertMetricNames()
        XCTAssertTrue(names.isSuperset(of: ["backbeat_has_leader", "backbeat_raft_voters_configured"]), "\(names)")
        let nats = try NatsServer()
        let dir = Harness.tempDir("alert-metrics")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let admin = Harness.freePort()
        let raft = Harness.freePort()
        let node = try PulseProcess(
            arguments: [
                "-bootstrap=true", "-bpm", "600", "-max-bpm", "600", "-cluster", "alerts", "-node-id", "n1", "-nats",
                nats.url, "-raft-bind", "127.0.0.1:\(raft)", "-peers", "n1@127.0.0.1:\(raft)", "-data-dir",
                dir + "/n1", "-admin-port", "\(admin)", "-max-offset-ms", "250",
            ], logPath: dir + "/n1.log")
        defer { node.stop(timeout: 5) }
        var text = ""
        XCTAssertTrue(
            Harness.waitUntil(seconds: 15) {
                text =
                    (try? RawClient(port: admin, timeoutMs: 1000))?.request(httpRequest("GET", "/metrics"))?.text ?? ""
                return (self.value(text, "backbeat_beats_total") ?? 0) >= 3
            }, node.log)
        for name in names {
            XCTAssertTrue(text.contains("\n\(name)"), "/metrics exports \(name), which an alert reads")
        }
        XCTAssertEqual(value(text, "backbeat_has_leader"), 1)
        XCTAssertEqual(value(text, "backbeat_raft_voters"), 1)
        XCTAssertEqual(value(text, "backbeat_raft_voters_configured"), 1)
        XCTAssertEqual(value(text, "backbeat_hlc_max_offset_seconds"), 0.25)
        XCTAssertGreaterThanOrEqual(value(text, "backbeat_raft_term") ?? 0, 1)
        XCTAssertGreaterThanOrEqual(value(text, "backbeat_raft_commit_index") ?? 0, 1)
        // The bootstrap's log entries were synced, timed by the store's queue.
        XCTAssertGreaterThanOrEqual(value(text, #"backbeat_fsync_duration_seconds_count{file="raft/log"}"#) ?? 0, 1)
        XCTAssertGreaterThanOrEqual(
            value(text, #"backbeat_fsync_duration_seconds_count{file="raft/hardstate"}"#) ?? 0, 1)
        XCTAssertGreaterThan(value(text, "process_cpu_seconds_total") ?? 0, 0)
        XCTAssertGreaterThan(value(text, "process_resident_memory_bytes") ?? 0, 1_000_000)
        XCTAssertGreaterThan(value(text, "process_virtual_memory_bytes") ?? 0, 1_000_000)
        let fds = try XCTUnwrap(value(text, "process_open_fds"))
        XCTAssertGreaterThan(fds, 3)
        XCTAssertGreaterThan(value(text, "process_max_fds") ?? 0, fds)
        let started = try XCTUnwrap(value(text, "process_start_time_seconds"))
        XCTAssertEqual(started, Date().timeIntervalSince1970, accuracy: 60)
        // The whole exposition still passes promtool's linter.
        try text.write(toFile: dir + "/metrics.txt", atomically: true, encoding: .utf8)
        let lint = Harness.sh("promtool check metrics < \(dir)/metrics.txt")
        XCTAssertEqual(lint.status, 0, lint.output)
    }

    func testProcStatParsing() {
        // proc(5): the name may hold spaces and ')'; utime 14, stime 15, starttime 22, vsize 23, rss 24.
        let line =
            "4242 (pulse (a) b) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 1000 123456789 2048 "
            + "18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0"
        let stat = ProcessMetrics.parseStat(line, ticksPerSecond: 100, pageBytes: 4096, bootTimeSeconds: 1_700_000_000)
        XCTAssertEqual(
            stat,
            .init(cpuSeconds: 3, virtualBytes: 123_456_789, residentBytes: 2048 * 4096, startTimeSeconds: 1_700_000_010)
        )
        XCTAssertNil(ProcessMetrics.parseStat("garbage", ticksPerSecond: 100, pageBytes: 4096, bootTimeSeconds: nil))
        XCTAssertNil(ProcessMetrics.parseStat("1 (x) S 1 2", ticksPerSecond: 100, pageBytes: 4096, bootTimeSeconds: 0))
        XCTAssertNil(
            ProcessMetrics.parseStat(line, ticksPerSecond: 100, pageBytes: 4096, bootTimeSeconds: nil)?.startTimeSeconds
        )
    }

    /// The value of an unlabelled series in exposition text.
    private func value(_ text: String, _ name: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.dropFirst(name.count + 1))
        }
        return nil
    }
}
