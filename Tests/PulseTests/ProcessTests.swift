// Real processes: a real nats-server on loopback, the built `pulse` binary,
// and an independent subscriber checking every frame against the contract.
import Foundation
import XCTest

final class ProcessTests: XCTestCase {
    private func runNode(
        bpm: Int, extra: [String] = [], phases: [String] = ["plan", "work", "review"], bar: Int = 8,
        cluster: String = "test-cluster", frames: Int
    ) throws -> (failures: [String], received: Int, log: String) {
        let nats = try NatsServer()
        let dir = Harness.tempDir("contract-\(bpm)")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.\(cluster).beat")
        let adminPort = Harness.freePort()
        let node = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "\(bpm)", "-bar", "\(bar)", "-phases", phases.joined(separator: ","),
                "-cluster", cluster, "-node-id", "node-abcd", "-nats", nats.url, "-data-dir", dir + "/data",
                "-admin-port", "\(adminPort)", "-max-bpm", "600",
            ] + extra, logPath: dir + "/node.log")
        let period = 60.0 / Double(bpm)
        subscriber.wait(for: frames, seconds: 3 + period * Double(frames + 2))
        let epoch = try ContractEpoch.load(adminPort: adminPort)
        XCTAssertEqual(node.stop(), 0, "clean exit on SIGTERM")
        let checker = FrameChecker(epoch: epoch, phases: phases, nodeId: "node-abcd")
        let received = subscriber.received
        return (checker.check(received), received.count, node.log)
    }

    func testFramesAt120BpmSatisfyTheContract() throws {
        let result = try runNode(bpm: 120, frames: 12)
        XCTAssertGreaterThanOrEqual(result.received, 12, result.log)
        XCTAssertEqual(result.failures, [], result.log)
    }

    func testFramesAt600BpmSatisfyTheContract() throws {
        let result = try runNode(bpm: 600, frames: 40)
        XCTAssertGreaterThanOrEqual(result.received, 40, result.log)
        XCTAssertEqual(result.failures, [], result.log)
    }

    func testOddTempoBarAndPhasesWithEscapedClusterId() throws {
        // 7 beats per bar, 2 phases, 190 bpm (a period that is not whole ms).
        let result = try runNode(
            bpm: 190, phases: ["think", "ünïcode \"q\""], bar: 7, cluster: "ops-ü",
            frames: 10)
        XCTAssertGreaterThanOrEqual(result.received, 10, result.log)
        XCTAssertEqual(result.failures, [], result.log)
    }

    func testSurvivesNatsServerRestart() throws {
        let nats = try NatsServer()
        let dir = Harness.tempDir("restart")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.restart.beat")
        let node = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", "restart", "-node-id", "n1",
                "-nats", nats.url, "-data-dir", dir + "/data", "-admin-port", "0",
            ], logPath: dir + "/node.log")
        XCTAssertTrue(subscriber.wait(for: 5, seconds: 5), node.log)
        nats.stop()
        usleep(700_000)
        XCTAssertTrue(node.process.isRunning, "pulse keeps running while NATS is down")
        try nats.start()
        let before = subscriber.count
        XCTAssertTrue(subscriber.wait(for: before + 10, seconds: 10), "frames resume after the restart\n" + node.log)
        XCTAssertEqual(node.stop(), 0)
        XCTAssertTrue(node.log.contains("NATS reconnected"), node.log)
        let indices = subscriber.received.compactMap { ($0.object["beat_index"] as? NSNumber)?.int64Value }
        XCTAssertEqual(indices, indices.sorted(), "indices never go backwards")
        XCTAssertEqual(Set(indices).count, indices.count, "no index repeats")
    }

    func testRestartKeepsTheTimeline() throws {
        let nats = try NatsServer()
        let dir = Harness.tempDir("keep")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adminPort = Harness.freePort()
        let args = [
            "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", "keep", "-nats", nats.url,
            "-data-dir", dir + "/data", "-admin-port", "\(adminPort)",
        ]
        var node = try PulseProcess(arguments: args, logPath: dir + "/a.log")
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.keep.beat")
        XCTAssertTrue(subscriber.wait(for: 3, seconds: 5))
        let epoch = try ContractEpoch.load(adminPort: adminPort)
        node.stop()
        let countBefore = subscriber.count
        node = try PulseProcess(arguments: args, logPath: dir + "/b.log")
        XCTAssertTrue(subscriber.wait(for: countBefore + 3, seconds: 5), node.log)
        XCTAssertEqual(try ContractEpoch.load(adminPort: adminPort).startNs, epoch.startNs, "same epoch after restart")
        node.stop()
        let indices = subscriber.received.compactMap { ($0.object["beat_index"] as? NSNumber)?.int64Value }
        XCTAssertEqual(indices, indices.sorted())
        XCTAssertEqual(Set(indices).count, indices.count)
        // From its one-voter Raft log (-bootstrap made no new timeline).
        XCTAssertTrue(node.log.contains("timeline committed"), node.log)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/data/epoch.json"), "no second commit path")
    }
}
