// Operator conventions: an environment variable for every flag (flags win),
// the -config file, SIGHUP's log level, --help and --version.
import Foundation
import XCTest

@testable import Pulse

final class OpsConfigTests: XCTestCase {
    /// Every `--name` the help lists has an entry in `PulseCommand.settings`
    /// (so an environment variable), and every entry is a real option.
    func testEveryFlagHasAnEnvironmentVariable() throws {
        let help = PulseCommand.helpMessage(columns: 200)
        var declared = Set<String>()
        let scanner = help.split(whereSeparator: { " ,\n<>[]".contains($0) })
        for word in scanner where word.hasPrefix("--") && word.count > 2 {
            declared.insert(String(word.dropFirst(2)))
        }
        declared.remove("help")
        let listed = Set(PulseCommand.settings.map(\.flag))
        XCTAssertEqual(declared, listed, "help: \(help)")
        XCTAssertEqual(PulseCommand.environmentName("raft-bind"), "BACKBEAT_RAFT_BIND")
        XCTAssertEqual(PulseCommand.environmentName("cluster"), "BACKBEAT_CLUSTER_ID")
        XCTAssertEqual(PulseCommand.environmentName("data-dir"), "BACKBEAT_DATA_DIR")
        XCTAssertEqual(PulseCommand.environmentName("log-level"), "BACKBEAT_LOG_LEVEL")
    }

    func testEnvironmentForEveryKindOfFlagAndFlagsWin() throws {
        let env = [
            "BACKBEAT_BPM": "20", "BACKBEAT_BAR": "4", "BACKBEAT_PHASES": "a,b",
            "BACKBEAT_NATS": "nats://10.0.0.1:4222",
            "BACKBEAT_ADMIN_BIND": "0.0.0.0", "BACKBEAT_BOOTSTRAP": "true", "BACKBEAT_HEARTBEAT_MS": "40",
            "BACKBEAT_ADMIN_TOKEN": "s3cret", "BACKBEAT_LOG_FORMAT": "json", "BACKBEAT_UNRELATED_THING": "x",
        ]
        let config = try PulseCommand.parseConfig([], environment: env)
        XCTAssertEqual(config.bpm, 20)
        XCTAssertEqual(config.bar, 4)
        XCTAssertEqual(config.phases, ["a", "b"])
        XCTAssertEqual(config.natsURL, "nats://10.0.0.1:4222")
        XCTAssertEqual(config.adminBind, "0.0.0.0")
        XCTAssertTrue(config.bootstrap)
        XCTAssertEqual(config.heartbeatMs, 40)
        XCTAssertEqual(config.adminToken, "s3cret")
        XCTAssertEqual(config.logFormat, "json")
        // Flags win, a switch given twice (environment and flag) is fine.
        let flags = try PulseCommand.parseConfig(
            ["-bpm", "16", "--bar=2", "-bootstrap", "-admin-token", "", "-admin-bind", "127.0.0.1"], environment: env)
        XCTAssertEqual(flags.bpm, 16)
        XCTAssertEqual(flags.bar, 2)
        XCTAssertTrue(flags.bootstrap)
        XCTAssertNil(flags.adminToken)
        XCTAssertFalse(try PulseCommand.parseConfig([], environment: ["BACKBEAT_BOOTSTRAP": "0"]).bootstrap)
        XCTAssertFalse(try PulseCommand.parseConfig([], environment: ["BACKBEAT_BPM": ""]).bootstrap)
    }

    func testBadEnvironmentValuesNameTheirVariable() {
        let cases: [([String: String], String)] = [
            (["BACKBEAT_BPM": "abc"], "BACKBEAT_BPM"),
            (["BACKBEAT_BOOTSTRAP": "maybe"], "BACKBEAT_BOOTSTRAP"),
            (["BACKBEAT_ADMIN_PORT": "-"], "BACKBEAT_ADMIN_PORT"),
            (["BACKBEAT_BPM": "300"], "-bpm 300"),  // parses, then the rule refuses it
        ]
        for (env, expected) in cases {
            XCTAssertThrowsError(try PulseCommand.parseConfig([], environment: env), "\(env)") { error in
                XCTAssertTrue("\(error)".contains(expected), "\(env): \(error)")
                XCTAssertFalse("\(error)".contains("\n"), "\(error)")
            }
        }
    }

    func testConfigFileUnderEnvironmentUnderFlags() throws {
        let dir = Harness.tempDir("config-file")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/pulse.env"
        try """
        # a systemd EnvironmentFile
        BACKBEAT_BPM=20
        export BACKBEAT_CLUSTER_ID="from-file"
        BACKBEAT_BAR = '4'

        BACKBEAT_LOG_LEVEL=warn
        """.write(toFile: file, atomically: true, encoding: .utf8)
        let fromFile = try PulseCommand.parseConfig(["-config", file], environment: [:])
        XCTAssertEqual(fromFile.bpm, 20)
        XCTAssertEqual(fromFile.clusterId, "from-file")
        XCTAssertEqual(fromFile.bar, 4)
        XCTAssertEqual(fromFile.logLevel, "warn")
        XCTAssertFalse(fromFile.logLevelPinned)
        XCTAssertEqual(fromFile.configFile, file)
        let viaEnv = try PulseCommand.parseConfig(
            [], environment: ["BACKBEAT_CONFIG": file, "BACKBEAT_BPM": "16", "BACKBEAT_LOG_LEVEL": "error"])
        XCTAssertEqual(viaEnv.bpm, 16)
        XCTAssertEqual(viaEnv.clusterId, "from-file")
        XCTAssertTrue(viaEnv.logLevelPinned)
        let flagWins = try PulseCommand.parseConfig(
            ["-config", file, "-bpm", "8"], environment: ["BACKBEAT_BPM": "16"])
        XCTAssertEqual(flagWins.bpm, 8)

        XCTAssertThrowsError(try ConfigFile.parse("BACKBEAT_BPM=1\nBACKBEAT_BMP=2\n")) { error in
            XCTAssertTrue("\(error)".contains("line 2"), "\(error)")
        }
        XCTAssertThrowsError(try ConfigFile.parse("just words\n"))
        XCTAssertThrowsError(try ConfigFile.parse("BACKBEAT_CONFIG=/etc/loop\n"))
        XCTAssertThrowsError(try PulseCommand.parseConfig(["-config", dir + "/missing"], environment: [:]))
    }

    func testSighupLogLevelReload() throws {
        let dir = Harness.tempDir("config-reload")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/pulse.env"
        try "BACKBEAT_LOG_LEVEL=info\n".write(toFile: file, atomically: true, encoding: .utf8)
        let config = try PulseCommand.parseConfig(["-config", file], environment: [:])
        try "BACKBEAT_LOG_LEVEL=debug\n".write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(config.reloadLogLevel(), .changed("debug"))
        try "# level removed\n".write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(config.reloadLogLevel(), .changed("info"))
        try "BACKBEAT_LOG_LEVEL=loud\n".write(toFile: file, atomically: true, encoding: .utf8)
        guard case .failed = config.reloadLogLevel() else { return XCTFail("a bad level is refused") }
        let pinned = try PulseCommand.parseConfig(
            ["-config", dir + "/pulse.env", "-log-level", "warn"], environment: [:]
        )
        .reloadLogLevel()
        guard case .unchanged = pinned else { return XCTFail("a flag pins the level: \(pinned)") }
        guard case .unchanged = try PulseCommand.parseConfig([], environment: [:]).reloadLogLevel() else {
            return XCTFail("no file: nothing to reload")
        }
    }

    func testHelpAndVersion() throws {
        let help = try runPulse(["--help"])
        XCTAssertEqual(help.status, 0)
        XCTAssertFalse(help.stdout.contains("pulse_command"), help.stdout)
        XCTAssertTrue(help.stdout.contains("USAGE: pulse "), help.stdout)
        XCTAssertTrue(help.stdout.contains("BACKBEAT_<FLAG>"), help.stdout)
        let watch = try runPulse(["watch", "--help"])
        XCTAssertFalse(watch.stdout.contains("watch_command"), watch.stdout)
        for flag in ["--version", "-version"] {
            let version = try runPulse([flag])
            XCTAssertEqual(version.status, 0)
            let line = version.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            XCTAssertEqual(line, BuildInfo.line)
            XCTAssertTrue(
                line.range(
                    of: #"^pulse \d+\.\d+\.\d+ \(commit [0-9a-zA-Z._-]+, Swift \d+\.\d+\+?, (debug|release)\)$"#,
                    options: .regularExpression)
                    != nil, line)
            XCTAssertFalse(line.contains("/"), "no machine path: \(line)")
        }
    }
}

final class PeerNameTests: XCTestCase {
    func testHostNamesAndBindAddress() throws {
        let list = try PeerList.parse(
            peers: ["n1@pulse-1:7000", "n2@pulse-2.backbeat.svc:7000", "n3@10.0.0.3:7000"], nodeId: "n1",
            raftBind: "0.0.0.0:7000")
        XCTAssertEqual(list.me.name, "n1")
        XCTAssertFalse(list.me.isNumeric)
        XCTAssertEqual(list.bindHost, "0.0.0.0")
        XCTAssertEqual(list.bindPort, 7000)
        // A numeric own entry listens where it says (as before).
        let numeric = try PulseCommand.parseConfig(
            ["-peers", "n1@127.0.0.1:7001,n2@localhost:7002", "-node-id", "n1"], environment: [:])
        XCTAssertEqual(numeric.peers.count, 2)
        // Named own entry without a -raft-bind port: refused with the fix.
        XCTAssertThrowsError(try PeerList.parse(peers: ["n1@pulse-1:7000"], nodeId: "n1", raftBind: "127.0.0.1:0")) {
            XCTAssertTrue("\($0)".contains("-raft-bind"), "\($0)")
        }
        XCTAssertThrowsError(try PeerList.parse(peers: ["n1@pulse-1:7000"], nodeId: "n1", raftBind: "pulse-1:7000"))
        for bad in ["n1@-bad:1", "n1@a..b:1", "n1@under_score:1", "n1@1.2.3:1", "n1@\u{e9}t\u{e9}:1", "n1@:1"] {
            XCTAssertThrowsError(try PeerList.parsePeer(bad), bad)
        }
        XCTAssertTrue(PeerList.isHostName("localhost"))
        XCTAssertTrue(PeerList.isHostName("a-1.example.com"))
        XCTAssertFalse(PeerList.isHostName(String(repeating: "a", count: 64)))
    }

    func testLookup() throws {
        guard case .success(let address) = PeerResolver.lookup(host: "localhost", port: 7001) else {
            return XCTFail("localhost resolves")
        }
        XCTAssertEqual(PeerResolver.text(address), "127.0.0.1:7001")
        guard case .failure = PeerResolver.lookup(host: "pulse-gone.invalid", port: 1) else {
            return XCTFail(".invalid never resolves")
        }
    }
}
