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
    /// A running 3-node cluster at 300 bpm, all started with `-bar 4`.
    private func shapedCluster(_ name: String, extra: [String] = []) throws -> ClusterProcessTests.Cluster {
        try ClusterProcessTests.Cluster(cluster: name, bpm: 300, extra: ["-bar", "4"] + extra)
    }

    /// The arguments `Cluster.start(i)` uses, with `shape` instead of its `-bar 4`.
    private func arguments(_ c: ClusterProcessTests.Cluster, _ i: Int, shape: [String], extra: [String] = [])
        -> [String]
    {
        [
            "-bootstrap", "-bpm", "\(c.bpm)", "-max-bpm", "600", "-cluster", c.cluster, "-node-id", c.names[i],
            "-raft-bind", "127.0.0.1:\(c.raftPorts[i])", "-peers", c.peers, "-nats", c.nats.url,
            "-data-dir", "\(c.dir)/\(c.names[i])", "-admin-port", "\(c.adminPorts[i])",
        ] + shape + extra
    }

    /// Waits (bounded) for `process` to exit; returns its status, or nil if it kept running.
    private func exitStatus(_ process: PulseProcess, seconds: Double) -> Int32? {
        guard Harness.waitUntil(seconds: seconds, { !process.process.isRunning }) else { return nil }
        return process.process.terminationStatus
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

    private func checkRefusals(compactEvery: [String], name: String) throws {
        let cluster = try shapedCluster(name, extra: compactEvery)
        let subscriber = try Subscriber(url: cluster.nats.url, subject: "backbeat.\(name).beat")
        XCTAssertNotNil(cluster.leader(), cluster.logs)
        XCTAssertTrue(subscriber.wait(for: 4, seconds: 15), cluster.logs)
        // Node 3 has applied the committed shape.
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { cluster.get(2, "/timeline")["bar"] as? Int == 4 }, cluster.logs)
        XCTAssertEqual(cluster.get(2, "/timeline")["phases"] as? [String], ["plan", "work", "review"])
        cluster.nodes[2]?.stop()
        cluster.nodes[2] = nil

        // 1. Restarted on its data dir with another -bar: refuses to start, naming both.
        let restarted = try PulseProcess(
            arguments: arguments(cluster, 2, shape: ["-bar", "8"], extra: compactEvery),
            logPath: "\(cluster.dir)/n3-restart.log")
        let restartStatus = exitStatus(restarted, seconds: 15)
        XCTAssertNotNil(restartStatus, "still running\n" + restarted.log)
        XCTAssertNotEqual(restartStatus, 0, restarted.log)
        XCTAssertTrue(restarted.log.contains("-bar 4 -phases plan,work,review"), restarted.log)
        XCTAssertTrue(restarted.log.contains("-bar 8 -phases plan,work,review"), restarted.log)
        XCTAssertTrue(restarted.log.contains("pulse: error: data dir"), "refused at start-up: " + restarted.log)

        // 2. A fresh node (empty data dir) joining with another -bar: stops when it first applies the shape.
        try FileManager.default.removeItem(atPath: "\(cluster.dir)/n3")
        let before = subscriber.count
        let joined = try PulseProcess(
            arguments: arguments(cluster, 2, shape: ["-bar", "8"], extra: compactEvery),
            logPath: "\(cluster.dir)/n3-join.log")
        let joinStatus = exitStatus(joined, seconds: 20)
        XCTAssertNotNil(joinStatus, "still running\n" + joined.log)
        XCTAssertNotEqual(joinStatus, 0, joined.log)
        XCTAssertTrue(joined.log.contains("-bar 4 -phases plan,work,review"), joined.log)
        XCTAssertTrue(joined.log.contains("-bar 8 -phases plan,work,review"), joined.log)
        XCTAssertTrue(joined.log.contains("the cluster's"), "refused on apply, not at start-up: " + joined.log)
        // The cluster kept beating meanwhile, and only with bar 4.
        XCTAssertTrue(subscriber.wait(for: before + 4, seconds: 10), cluster.logs)
        assertFramesHaveBar4(subscriber, cluster.logs + "\n--- join\n" + joined.log)

        // 3. With the committed shape it runs again (its data dir now holds the log or snapshot).
        cluster.nodes[2] = try PulseProcess(
            arguments: arguments(cluster, 2, shape: ["-bar", "4"], extra: compactEvery),
            logPath: "\(cluster.dir)/n3.log")
        XCTAssertTrue(
            Harness.waitUntil(seconds: 15) { cluster.get(2, "/timeline")["bar"] as? Int == 4 }, cluster.logs)
        XCTAssertTrue(cluster.nodes[2]?.process.isRunning ?? false, cluster.logs)
    }

    func testClusterNodeWithAnotherBarRefusesOnRestartAndOnJoin() throws {
        try checkRefusals(compactEvery: [], name: "shapelog")
    }

    /// The same with the log compacted at once: the shape comes from snapshots
    /// (the restarted node's own, and the one the leader sends the fresh node).
    func testClusterNodeWithAnotherBarRefusesFromSnapshots() throws {
        try checkRefusals(compactEvery: ["-raft-compact-every", "2"], name: "shapesnap")
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
        let stored = try DataDirFiles.parseEpoch(Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/epoch.json"))))
        XCTAssertEqual(stored.phases, ["a", "b", "c"], "the shape is in epoch.json")

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

    /// A data dir of the previous version (`epoch.json` without phases) keeps
    /// working: the node adopts its -phases and writes them; from then on they are committed.
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
        XCTAssertEqual(node.stop(), 0, node.log)
        let stored = try DataDirFiles.parseEpoch(Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/epoch.json"))))
        XCTAssertEqual(stored.phases, ["p", "q"], "adopted and written")
        XCTAssertEqual(stored.startNs, startNs, "the same timeline")
        let result = try runPulse(
            ["-cluster", "solo", "-data-dir", dir, "-admin-port", "0", "-nats", nats.url, "-bar", "4"], timeout: 10)
        XCTAssertEqual(result.status, 2, "the default -phases differ from the adopted ones: " + result.stderr)
        XCTAssertTrue(result.stderr.contains("-bar 4 -phases p,q"), result.stderr)
    }
}
