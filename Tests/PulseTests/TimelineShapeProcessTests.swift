// The timeline's shape is committed state (requirements §12), with real
// `pulse` processes and a real nats-server: a node whose -bar/-phases differ
// from the committed shape exits non-zero with a reason naming both — when
// restarted on its data dir, and when it joins fresh and first applies the
// shape (from the log, or from a snapshot) — and publishes nothing; with
// the right flags it runs again. A single node keeps its shape likewise, and
// a data dir of a previous version (no phases) adopts the flags.
import Foundation
import Glibc
import XCTest

@testable import Pulse

final class TimelineShapeProcessTests: XCTestCase {
    /// Three nodes named in one peer list, started one by one (a node's
    /// first start with an empty data dir is how it joins: membership is
    /// fixed at bootstrap), at 300 bpm.
    final class Nodes {
        let nats: NatsServer
        let dir: String
        let cluster: String
        let raftPorts = (0..<3).map { _ in Harness.freePort() }
        let adminPorts = (0..<3).map { _ in Harness.freePort() }
        let extra: [String]
        var nodes: [PulseProcess?] = [nil, nil, nil]

        init(cluster: String, extra: [String]) throws {
            nats = try NatsServer()
            dir = Harness.tempDir(cluster)
            self.cluster = cluster
            self.extra = extra
        }

        var peers: String { (0..<3).map { "n\($0 + 1)@127.0.0.1:\(raftPorts[$0])" }.joined(separator: ",") }

        /// Starts node `i` (0-based) with `shape` flags; `label` names its log file.
        @discardableResult
        func start(_ i: Int, shape: [String], label: String = "") throws -> PulseProcess {
            let process = try PulseProcess(
                arguments: [
                    "-bootstrap", "-bpm", "300", "-max-bpm", "600", "-cluster", cluster, "-node-id", "n\(i + 1)",
                    "-raft-bind", "127.0.0.1:\(raftPorts[i])", "-peers", peers, "-nats", nats.url,
                    "-data-dir", "\(dir)/n\(i + 1)", "-admin-port", "\(adminPorts[i])",
                ] + shape + extra, logPath: "\(dir)/n\(i + 1)\(label).log")
            nodes[i] = process
            return process
        }

        func timeline(_ i: Int) -> [String: Any] {
            guard let client = try? RawClient(port: adminPorts[i], timeoutMs: 2000),
                let response = client.request(httpRequest("GET", "/timeline"))
            else { return [:] }
            return response.json
        }

        var logs: String { nodes.compactMap { $0.map { "--- \($0.logPath)\n" + $0.log } }.joined(separator: "\n") }

        deinit {
            for node in nodes { node?.stop() }
            try? FileManager.default.removeItem(atPath: dir)
        }
    }

    /// Waits (bounded) for `process` to exit; returns its status, or nil if it kept running.
    private func exitStatus(_ process: PulseProcess, seconds: Double) -> Int32? {
        guard Harness.waitUntil(seconds: seconds, { !process.process.isRunning }) else { return nil }
        return process.process.terminationStatus
    }

    /// The process exited non-zero within `seconds`, naming the committed
    /// shape (bar 4) and its own (bar 8).
    private func assertRefused(_ process: PulseProcess, seconds: Double, line: UInt = #line) {
        let status = exitStatus(process, seconds: seconds)
        XCTAssertNotNil(status, "still running\n" + process.log, line: line)
        XCTAssertNotEqual(status, 0, process.log, line: line)
        XCTAssertTrue(
            process.log.contains("holds the timeline shape -bar 4 -phases plan,work,review"), process.log, line: line)
        XCTAssertTrue(process.log.contains("started with -bar 8 -phases plan,work,review"), process.log, line: line)
        XCTAssertTrue(process.log.contains("pulse: error: "), "the reason on stderr: " + process.log, line: line)
    }

    /// Every frame agrees with bar 4 and the default phases: a node running
    /// bar 8 would have published a beat `k % 8 == 4` without a downbeat.
    private func assertFramesHaveBar4(_ subscriber: Subscriber, _ logs: String, line: UInt = #line) {
        let phases = ["plan", "work", "review"]
        var checked = 0
        for frame in subscriber.received {
            let o = frame.object
            guard let k = (o["beat_index"] as? NSNumber)?.int64Value else { continue }
            let r = Int((k % 4 + 4) % 4)
            XCTAssertEqual(o["downbeat"] as? Bool, r == 0, "beat \(k)\n\(logs)", line: line)
            XCTAssertEqual(o["phase"] as? String, phases[r * 3 / 4], "beat \(k)", line: line)
            checked += 1
        }
        XCTAssertGreaterThan(checked, 8, "frames were checked", line: line)
    }

    private func checkRefusals(name: String, extra: [String], joinsFrom source: String) throws {
        let c = try Nodes(cluster: name, extra: extra)
        let subscriber = try Subscriber(url: c.nats.url, subject: "backbeat.\(name).beat")
        // Two of three bootstrap the timeline with -bar 4.
        try c.start(0, shape: ["-bar", "4"])
        try c.start(1, shape: ["-bar", "4"])
        XCTAssertTrue(subscriber.wait(for: 4, seconds: 15), c.logs)

        // 1. The third starts for the first time with -bar 8: it stops when it
        //    first applies the committed shape (log entry or snapshot), publishing nothing.
        let joined = try c.start(2, shape: ["-bar", "8"], label: "-join")
        assertRefused(joined, seconds: 20)
        XCTAssertTrue(joined.log.contains("the cluster's \(source) holds"), "refused on apply: " + joined.log)
        XCTAssertEqual(c.timeline(2).count, 0, "gone")

        // 2. On the data dir it wrote before stopping, still -bar 8: refused at start-up.
        let again = try c.start(2, shape: ["-bar", "8"], label: "-again")
        assertRefused(again, seconds: 10)
        XCTAssertTrue(again.log.contains("pulse: error: data dir"), "refused at start-up: " + again.log)

        // 3. With the committed shape it joins and serves it.
        let good = try c.start(2, shape: ["-bar", "4"])
        XCTAssertTrue(Harness.waitUntil(seconds: 15) { c.timeline(2)["bar"] as? Int == 4 }, c.logs)
        XCTAssertEqual(c.timeline(2)["phases"] as? [String], ["plan", "work", "review"])

        // 4. A node that ran with it, restarted with another -bar: refused at start-up.
        XCTAssertEqual(good.stop(), 0, good.log)
        let restarted = try c.start(2, shape: ["-bar", "8"], label: "-restart")
        assertRefused(restarted, seconds: 10)
        XCTAssertTrue(restarted.log.contains("pulse: error: data dir"), "refused at start-up: " + restarted.log)

        // Meanwhile the cluster kept beating, and only with bar 4.
        let before = subscriber.count
        XCTAssertTrue(subscriber.wait(for: before + 2, seconds: 10), c.logs)
        assertFramesHaveBar4(subscriber, c.logs)
    }

    func testClusterNodeWithAnotherBarRefusesOnJoinAndRestart() throws {
        try checkRefusals(name: "shapelog", extra: [], joinsFrom: "committed log")
    }

    /// The same with the log compacted at once: the shape comes from snapshots
    /// (the one the leader sends the fresh node, and the node's own at start-up).
    func testClusterNodeWithAnotherBarRefusesFromSnapshots() throws {
        try checkRefusals(name: "shapesnap", extra: ["-raft-compact-every", "2"], joinsFrom: "snapshot")
    }

    // MARK: single node

    private func single(_ dir: String, port: Int, nats: NatsServer, _ extra: [String]) throws -> PulseProcess {
        try PulseProcess(
            arguments: ["-cluster", "solo", "-data-dir", dir, "-admin-port", "\(port)", "-nats", nats.url] + extra,
            logPath: dir + ".log")
    }

    private func timeline(port: Int) -> [String: Any] {
        guard let client = try? RawClient(port: port, timeoutMs: 2000),
            let response = client.request(httpRequest("GET", "/timeline"))
        else { return [:] }
        return response.json
    }

    func testSingleNodeRestartWithOtherPhasesRefuses() throws {
        let nats = try NatsServer()
        let base = Harness.tempDir("shape-single")
        defer { try? FileManager.default.removeItem(atPath: base) }
        let dir = base + "/n"
        let port = Harness.freePort()
        let node = try single(dir, port: port, nats: nats, ["-bootstrap", "-bar", "6", "-phases", "a,b,c"])
        XCTAssertTrue(Harness.waitUntil(seconds: 10) { self.timeline(port: port)["bar"] as? Int == 6 }, node.log)
        XCTAssertEqual(timeline(port: port)["phases"] as? [String], ["a", "b", "c"])
        XCTAssertEqual(node.stop(), 0, node.log)
        // The shape is in the one-voter Raft log (no epoch.json any more).
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/raft/log"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/epoch.json"))

        for flags in [["-bar", "6", "-phases", "x,y"], ["-bar", "6"], ["-bar", "3", "-phases", "a,b,c"]] {
            let result = try runPulse(
                ["-cluster", "solo", "-data-dir", dir, "-admin-port", "0", "-nats", nats.url] + flags, timeout: 10)
            XCTAssertEqual(result.status, 2, "\(flags): " + result.stderr)
            let lines = result.stderr.split(separator: "\n").filter { !$0.isEmpty }
            XCTAssertEqual(lines.count, 1, "one line: " + result.stderr)
            XCTAssertTrue(result.stderr.contains("-bar 6 -phases a,b,c"), "names the committed shape: " + result.stderr)
            XCTAssertTrue(result.stderr.contains("this node was started with -bar"), result.stderr)
        }
        // With its shape it starts again (-bootstrap does not make a new timeline).
        let again = try single(dir, port: port, nats: nats, ["-bootstrap", "-bar", "6", "-phases", "a,b,c"])
        XCTAssertTrue(Harness.waitUntil(seconds: 10) { self.timeline(port: port)["bar"] as? Int == 6 }, again.log)
        XCTAssertEqual(again.stop(), 0, again.log)
    }

    /// A data dir of an older version (`epoch.json` without phases) keeps
    /// working: the node adopts its -phases and commits them with the
    /// migrated timeline (EpochMigration); from then on they are committed.
    func testSingleNodeDataDirWithoutPhasesAdoptsTheFlags() throws {
        let nats = try NatsServer()
        let base = Harness.tempDir("shape-legacy")
        defer { try? FileManager.default.removeItem(atPath: base) }
        let dir = base + "/n"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let startNs = (Int64(Date().timeIntervalSince1970) - 60) * 1_000_000_000
        try Data(#"{"clusterId":"solo","startBeat":0,"startNs":\#(startNs),"bpm":120,"bar":4}"#.utf8)
            .write(to: URL(fileURLWithPath: dir + "/epoch.json"))
        let port = Harness.freePort()
        let node = try single(dir, port: port, nats: nats, ["-bar", "4", "-phases", "p,q"])
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { self.timeline(port: port)["phases"] as? [String] == ["p", "q"] },
            node.log)
        let epoch = self.timeline(port: port)["epoch"] as? [String: Any]
        XCTAssertEqual((epoch?["start_ns"] as? NSNumber)?.int64Value, startNs, "the same timeline")
        XCTAssertEqual(node.stop(), 0, node.log)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/epoch.json.migrated"), "migrated, kept")
        let result = try runPulse(
            ["-cluster", "solo", "-data-dir", dir, "-admin-port", "0", "-nats", nats.url, "-bar", "4"], timeout: 10)
        XCTAssertEqual(result.status, 2, "the default -phases differ from the adopted ones: " + result.stderr)
        XCTAssertTrue(result.stderr.contains("-bar 4 -phases p,q"), result.stderr)
    }

    // MARK: restore

    /// A restored data dir holds the backup's shape: a node started on it
    /// with other flags refuses at start-up (single node: epoch.json; cluster: the snapshot).
    func testARestoreSeedsTheShape() throws {
        let base = Harness.tempDir("shape-restore")
        defer { try? FileManager.default.removeItem(atPath: base) }
        let nowNs = Int64(Date().timeIntervalSince1970) * 1_000_000_000
        let backup = BackupFile(
            clusterId: "rs", nodeId: "n1", bar: 6, phases: ["a", "b"],
            epoch: .init(startBeat: 0, startNs: nowNs - 60_000_000_000, bpm: 120), pending: nil, term: 3, index: 7,
            lastBeat: 100, takenAtNs: nowNs)
        let file = base + "/b.json"
        try Data(try backup.encoded()).write(to: URL(fileURLWithPath: file))
        let raftPort = Harness.freePort()
        for (name, peers) in [("single", [String]()), ("cluster", ["--peers", "n1@127.0.0.1:\(raftPort)"])] {
            let dir = "\(base)/\(name)"
            let restored = try runPulse(["restore", "--from", file, "--data-dir", dir, "--node-id", "n1"] + peers)
            XCTAssertEqual(restored.status, 0, restored.stderr)
            XCTAssertTrue(restored.stdout.contains("-bar 6 -phases a,b"), "the start command: " + restored.stdout)
            let nodePeers =
                peers.isEmpty ? [] : ["-peers", "n1@127.0.0.1:\(raftPort)", "-raft-bind", "127.0.0.1:\(raftPort)"]
            let result = try runPulse(
                ["-cluster", "rs", "-data-dir", dir, "-admin-port", "0", "-nats", "nats://127.0.0.1:1", "-bar", "6"]
                    + nodePeers, timeout: 10)
            XCTAssertEqual(result.status, 2, "\(name): " + result.stderr)
            XCTAssertTrue(result.stderr.contains("holds the timeline shape -bar 6 -phases a,b"), result.stderr)
            XCTAssertTrue(result.stderr.contains("started with -bar 6 -phases plan,work,review"), result.stderr)
        }
    }
}
