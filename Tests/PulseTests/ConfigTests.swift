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
    /// Go's flag package spelling of switches: `-x=true`, `--x=false`, for
    /// every switch; false on the command line wins over the environment.
    func testGoStyleSwitchValues() throws {
        let peers = ["-peers", "a@127.0.0.1:1,127.0.0.1:2", "-raft-bind", "127.0.0.1:2"]
        let on = try PulseCommand.parseConfig(["-bootstrap=true", "--mlock=1"] + peers, environment: [:])
        XCTAssertTrue(on.bootstrap)
        XCTAssertTrue(on.lockMemory)
        let off = try PulseCommand.parseConfig(
            ["-bootstrap=false", "--mlock=FALSE", "-join=f"], environment: ["BACKBEAT_BOOTSTRAP": "true"])
        XCTAssertFalse(off.bootstrap, "-bootstrap=false wins over BACKBEAT_BOOTSTRAP=true")
        XCTAssertFalse(off.lockMemory)
        XCTAssertFalse(off.join)
        let join = try PulseCommand.parseConfig(["--join=True"] + peers, environment: [:])
        XCTAssertTrue(join.join)
        // Every switch takes a value; a value that is not a boolean is one line.
        for (flag, isSwitch) in PulseCommand.settings where isSwitch {
            XCTAssertNoThrow(try PulseCommand.parseConfig(["-\(flag)=false"], environment: [:]), flag)
            XCTAssertThrowsError(try PulseCommand.parseConfig(["-\(flag)=maybe"], environment: [:])) {
                XCTAssertTrue("\($0)".contains("-\(flag)=true"), "\($0)")
            }
        }
        // An option's value that looks like a switch is still the option's value.
        let token = try PulseCommand.parseConfig(["-admin-token=-bootstrap=true"], environment: [:])
        XCTAssertEqual(token.adminToken, "-bootstrap=true")
        XCTAssertFalse(token.bootstrap)
        // The binary itself, as the seed's scripts call it.
        let result = try runPulse(["-bootstrap=maybe"])
        XCTAssertEqual(result.status, 2, result.stderr)
        XCTAssertTrue(result.stderr.hasPrefix("pulse: error: -bootstrap is a switch"), result.stderr)
    }

    /// `-admin-token-file` / BACKBEAT_ADMIN_TOKEN_FILE: a secret mounted as a
    /// file; trailing newline dropped; empty, multi-line or both sources refused.
    func testAdminTokenFromAFile() throws {
        let dir = Harness.tempDir("tokenfile")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/token"
        try "s3cret\n".write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(
            try PulseCommand.parseConfig(["-admin-token-file", file], environment: [:]).adminToken, "s3cret")
        XCTAssertEqual(
            try PulseCommand.parseConfig([], environment: ["BACKBEAT_ADMIN_TOKEN_FILE": file]).adminToken, "s3cret")
        XCTAssertThrowsError(
            try PulseCommand.parseConfig(["-admin-token", "x", "-admin-token-file", file], environment: [:]))
        let bad = dir + "/bad"
        for contents in ["", "\n", "two words\n", "a\nb\n"] {
            try contents.write(toFile: bad, atomically: true, encoding: .utf8)
            XCTAssertThrowsError(try PulseCommand.parseConfig(["-admin-token-file", bad], environment: [:]), contents) {
                XCTAssertTrue("\($0)".hasPrefix("-admin-token-file \(bad): "), "\($0)")
            }
        }
        XCTAssertThrowsError(try PulseCommand.parseConfig(["-admin-token-file", dir + "/none"], environment: [:]))
    }
    /// -cpu names an online CPU by its number (a container's cpuset need not
    /// start at 0), and a process pinned elsewhere may still start one for it.
    func testCpuListsAndAnOnlineCpu() throws {
        XCTAssertEqual(PulseConfig.parseCPUList("0-3,8,10-11\n"), [0, 1, 2, 3, 8, 10, 11])
        XCTAssertEqual(PulseConfig.parseCPUList("5"), [5])
        for bad in ["", "x", "3-1", "1-", "-2", "1,,2", "0-99999"] {
            XCTAssertEqual(PulseConfig.parseCPUList(bad), [], bad)
        }
        let online = PulseConfig.allowedCPUs()
        XCTAssertFalse(online.isEmpty)
        XCTAssertThrowsError(try PulseCommand.parseConfig(["-cpu", "\(online.max()! + 1)"], environment: [:]))
        guard online.count >= 2 else { throw XCTSkip("needs 2 CPUs") }
        let dir = Harness.tempDir("affinity")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Started from a process pinned to one CPU, for another one: accepted.
        let accepted = Harness.sh(
            "taskset -c \(online[0]) \(Harness.pulsePath) -data-dir \(dir) -nats nats://127.0.0.1:1 -admin-port 0 -cpu \(online[1])"
        )
        XCTAssertFalse(accepted.output.contains("-cpu"), accepted.output)
        XCTAssertTrue(accepted.output.contains("-bootstrap"), "fails later, for want of a timeline: \(accepted.output)")
    }
}
