// The command line: seed flags with one or two dashes, the environment, and
// one-line refusals with a non-zero exit.
import Foundation
import XCTest

@testable import Pulse

final class ConfigTests: XCTestCase {
    func testSeedDefaults() throws {
        let config = try PulseCommand.parseConfig([], environment: [:])
        XCTAssertEqual(config.clusterId, "chorus-aus-01")
        XCTAssertEqual(config.bpm, 12)
        XCTAssertEqual(config.bar, 8)
        XCTAssertEqual(config.phases, ["plan", "work", "review"])
        XCTAssertEqual(config.minBpm, 4)
        XCTAssertEqual(config.maxBpm, 24)
        XCTAssertEqual(config.natsURL, "nats://localhost:4222")
        XCTAssertEqual(config.adminPort, 8080)
        XCTAssertEqual(config.raftBind, "127.0.0.1:0")
        XCTAssertFalse(config.bootstrap)
    }

    func testOneAndTwoDashesAndEquals() throws {
        let one = try PulseCommand.parseConfig(
            [
                "-bpm", "20", "-cluster", "c1", "-bootstrap", "-peers", "a@127.0.0.1:1,127.0.0.1:2", "-raft-bind",
                "127.0.0.1:2",
            ],
            environment: [:])
        let two = try PulseCommand.parseConfig(
            [
                "--bpm", "20", "--cluster", "c1", "--bootstrap", "--peers", "a@127.0.0.1:1,127.0.0.1:2", "--node-id",
                "a",
            ],
            environment: [:])
        let equals = try PulseCommand.parseConfig(
            ["-bpm=20", "--cluster=c1", "-bootstrap", "-peers=a@127.0.0.1:1,127.0.0.1:2", "-raft-bind=127.0.0.1:2"],
            environment: [:])
        for config in [one, two, equals] {
            XCTAssertEqual(config.bpm, 20)
            XCTAssertEqual(config.clusterId, "c1")
            XCTAssertTrue(config.bootstrap)
            XCTAssertEqual(config.peers, ["a@127.0.0.1:1", "127.0.0.1:2"])
        }
    }

    func testEnvironmentUnderFlags() throws {
        let env = ["BACKBEAT_CLUSTER_ID": "from-env", "BACKBEAT_DATA_DIR": "/tmp/x", "BACKBEAT_LOG_LEVEL": "DEBUG"]
        let fromEnv = try PulseCommand.parseConfig([], environment: env)
        XCTAssertEqual(fromEnv.clusterId, "from-env")
        XCTAssertEqual(fromEnv.dataDir, "/tmp/x")
        XCTAssertEqual(fromEnv.logLevel, "debug")
        let flagWins = try PulseCommand.parseConfig(["-cluster", "flag"], environment: env)
        XCTAssertEqual(flagWins.clusterId, "flag")
    }

    func testRuleViolationsAreRefused() {
        let bad: [[String]] = [
            ["-bpm", "30"],  // above the default max 24
            ["-bpm", "3"],
            ["-min-bpm", "10", "-max-bpm", "5"],
            ["-bar", "0"],
            ["-phases", "a,,b"],
            ["-bar", "2", "-phases", "a,b,c"],
            ["-cluster", "a.b"],
            ["-cluster", "has space"],
            ["-nats", "http://localhost:4222"],
            ["-admin-port", "70000"],
            ["-rt-priority", "120"],
            ["-cpu", "4096"],
            ["-peers", "127.0.0.1:1,127.0.0.1:1", "-raft-bind", "127.0.0.1:1"],
            ["-peers", "localhost:7001"],
            ["-peers", "a@127.0.0.1:7001"],  // this node is not among them and -raft-bind has no port
            ["-heartbeat-ms", "100", "-election-timeout-ms", "200"],
        ]
        for arguments in bad {
            XCTAssertThrowsError(try PulseCommand.parseConfig(arguments, environment: [:]), "\(arguments)") { error in
                XCTAssertFalse("\(error)".contains("\n"), "one line: \(error)")
            }
        }
        XCTAssertThrowsError(try PulseCommand.parseConfig([], environment: ["BACKBEAT_LOG_LEVEL": "loud"]))
    }

    func testBinaryRefusesBadFlagsWithOneLine() throws {
        for arguments in [["-bpm", "abc"], ["-unknown", "1"], ["-bpm", "100"], ["-cluster", "x>y"], ["-bar"]] {
            let result = try runPulse(arguments)
            XCTAssertEqual(result.status, 2, "\(arguments): \(result.stderr)")
            let lines = result.stderr.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, "\(arguments): \(result.stderr)")
            XCTAssertTrue(result.stderr.hasPrefix("pulse: error: "), result.stderr)
        }
    }

    func testWithoutTimelineOrBootstrapExitsWithReason() throws {
        let dir = Harness.tempDir("noboot")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let result = try runPulse(["-data-dir", dir, "-admin-port", "0", "-nats", "nats://127.0.0.1:1"])
        XCTAssertEqual(result.status, 2)
        XCTAssertTrue(result.stderr.contains("-bootstrap"), result.stderr)
    }

    func testHelpDocumentsEveryFlag() throws {
        let result = try runPulse(["--help"])
        XCTAssertEqual(result.status, 0)
        for flag in [
            "-cluster", "-node-id", "-bpm", "-bar", "-phases", "-min-bpm", "-max-bpm", "-nats", "-admin-port",
            "-raft-bind", "-bootstrap", "-peers", "-data-dir", "-cpu", "-rt-priority", "-mlock", "BACKBEAT_LOG_LEVEL",
            "BACKBEAT_DATA_DIR", "BACKBEAT_CLUSTER_ID",
        ] {
            XCTAssertTrue(result.stdout.contains(flag), "help mentions \(flag)")
        }
    }
}
