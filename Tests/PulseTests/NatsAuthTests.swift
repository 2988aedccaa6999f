// NATS authentication (issue #11): nkey and creds parsing (pure), and real
// processes against a real nats-server started with deploy/nats/backbeat.conf:
// the pulse publishes with its nkey, a consumer receives frames but cannot
// publish on the beat subject, wrong credentials are refused at start-up
// (malformed) or logged with backbeat_nats_connected 0 (unknown to the
// server), and secrets in the URL never reach logs or /health.
import CNats
import Foundation
import Glibc
import XCTest

@testable import Pulse

final class NatsAuthTests: XCTestCase {
    // MARK: pure

    func testSeedRoundTripAndRefusals() throws {
        let user = NatsAuth.generateUser()
        XCTAssertTrue(user.seed.hasPrefix("SU"), user.seed)
        XCTAssertTrue(user.publicKey.hasPrefix("U"), user.publicKey)
        XCTAssertEqual(user.seed.count, 58)
        XCTAssertEqual(user.publicKey.count, 56)
        XCTAssertEqual(try NatsAuth.userPublicKey(seed: user.seed), user.publicKey)
        XCTAssertEqual(try NatsAuth.parseSeedFile(fileContents: "# pulse\n\n\(user.seed)\n").publicKey, user.publicKey)
        // One character changed: the checksum catches it.
        var chars = Array(user.seed)
        chars[10] = chars[10] == "A" ? "B" : "A"
        XCTAssertThrowsError(try NatsAuth.userPublicKey(seed: String(chars)))
        XCTAssertThrowsError(try NatsAuth.userPublicKey(seed: "SUxyz!"))
        XCTAssertThrowsError(try NatsAuth.userPublicKey(seed: user.publicKey), "a public key is not a seed")
        XCTAssertThrowsError(try NatsAuth.parseSeedFile(fileContents: "password123\n"))
        XCTAssertEqual(NatsAuth.crc16(Array("123456789".utf8)[...]), 0x31C3, "CRC-16/XMODEM check value")
    }

    func testCredsParsing() throws {
        let user = NatsAuth.generateUser()
        let creds = """
            -----BEGIN NATS USER JWT-----
            eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJzdWIiOiJVQUJDIn0.c2lnbmF0dXJl
            ------END NATS USER JWT------

            ************************* IMPORTANT *************************
            NKEY Seed printed below can be used to sign and prove identity.

            -----BEGIN USER NKEY SEED-----
            \(user.seed)
            ------END USER NKEY SEED------
            """
        XCTAssertEqual(try NatsAuth.parseCreds(fileContents: creds).publicKey, user.publicKey)
        XCTAssertThrowsError(try NatsAuth.parseCreds(fileContents: "just text"))
        XCTAssertThrowsError(
            try NatsAuth.parseCreds(fileContents: creds.replacingOccurrences(of: ".c2lnbmF0dXJl", with: "")))
        XCTAssertThrowsError(
            try NatsAuth.parseCreds(fileContents: creds.replacingOccurrences(of: user.seed, with: "SUBAD")))
    }

    func testRedaction() {
        XCTAssertEqual(NatsAuth.redact("nats://user:s3cret@host:4222"), "nats://***@host:4222")
        XCTAssertEqual(
            NatsAuth.redact("nats://tok3n@host:4222,tls://a:b@h2:4222"), "nats://***@host:4222,tls://***@h2:4222")
        XCTAssertEqual(NatsAuth.redact("nats://host:4222"), "nats://host:4222")
    }

    // MARK: processes

    /// nats-server with deploy/nats/backbeat.conf on a free port.
    final class SecuredNats {
        let port = Harness.freePort()
        let process = Process()
        let pulse = NatsAuth.generateUser()
        let consumerPassword = "pw-\(UInt64.random(in: 1...UInt64.max))"
        let logPath: String

        /// A nats-server on `conf` (a path under the repository), with `arguments` added.
        init(dir: String, conf: String = "deploy/nats/backbeat.conf", arguments: [String] = []) throws {
            logPath = "\(dir)/nats.log"
            process.executableURL = URL(fileURLWithPath: NatsServer.binary)
            let conf = RaftTLSTests.repoRoot.appendingPathComponent(conf).path
            process.arguments = ["-c", conf, "-a", "127.0.0.1", "-p", "\(port)", "-l", logPath] + arguments
            var env = ProcessInfo.processInfo.environment
            env["BACKBEAT_PULSE_NKEY"] = pulse.publicKey
            env["BACKBEAT_CONSUMER_PASSWORD"] = consumerPassword
            process.environment = env
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            guard Harness.waitUntil(seconds: 10, { Harness.canConnect(port: self.port) }) else {
                throw NSError(domain: "nats-server with deploy/nats/backbeat.conf did not start", code: 1)
            }
        }

        var url: String { "nats://127.0.0.1:\(port)" }
        var consumerURL: String { "nats://consumer:\(consumerPassword)@127.0.0.1:\(port)" }

        deinit {
            if process.isRunning {
                process.terminate()
                process.waitUntilExit()
            }
        }
    }

    func metric(_ text: String, _ name: String) -> Double? {
        text.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { $0.split(separator: " ").last }
            .flatMap { Double($0) }
    }

    func get(_ port: Int, _ path: String) -> String {
        guard let client = try? RawClient(port: port, timeoutMs: 2000), let r = client.request(httpRequest("GET", path))
        else { return "" }
        return r.text
    }

    func testOnlyThePulsePublishesAndConsumersReceive() throws {
        let dir = Harness.tempDir("natsauth")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let nats = try SecuredNats(dir: dir)
        let seedPath = "\(dir)/pulse.nk"
        try Data("\(nats.pulse.seed)\n".utf8).write(to: URL(fileURLWithPath: seedPath))
        let admin = Harness.freePort()
        let pulse = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", "chorus-aus-01", "-nats", nats.url,
                "-nats-nkey", seedPath, "-data-dir", "\(dir)/data", "-admin-port", "\(admin)",
            ], logPath: "\(dir)/pulse.log")
        defer { pulse.stop() }

        // The consumer identity receives frames.
        let subscriber = try Subscriber(url: nats.consumerURL, subject: "backbeat.chorus-aus-01.beat")
        XCTAssertTrue(subscriber.wait(for: 3, seconds: 10), pulse.log)
        XCTAssertFalse(pulse.log.contains("NATS error"), pulse.log)

        // It cannot publish on the beat subject: the server refuses, nothing arrives.
        var opts: OpaquePointer?
        natsOptions_Create(&opts)
        natsOptions_SetURL(opts, nats.consumerURL)
        var nc: OpaquePointer?
        XCTAssertEqual(natsConnection_Connect(&nc, opts), NATS_OK)
        natsOptions_Destroy(opts)
        defer { natsConnection_Destroy(nc) }
        let forged = #"{"forged":true}"#
        natsConnection_PublishString(nc, "backbeat.chorus-aus-01.beat", forged)
        natsConnection_Flush(nc)
        let afterForgery = subscriber.count
        XCTAssertTrue(subscriber.wait(for: afterForgery + 5, seconds: 5), "frames keep arriving")
        XCTAssertFalse(subscriber.received.contains { $0.text == forged }, "the forged frame was delivered")
        let serverLog = (try? String(contentsOfFile: nats.logPath, encoding: .utf8)) ?? ""
        XCTAssertTrue(serverLog.contains("Publish Violation"), serverLog)

        let metrics = get(admin, "/metrics")
        XCTAssertEqual(metric(metrics, #"backbeat_nats_connected{connection="beat"}"#), 1, metrics)
        XCTAssertEqual(metric(metrics, #"backbeat_nats_connected{connection="requests"}"#), 1, metrics)
    }

    func testWrongCredentials() throws {
        let dir = Harness.tempDir("natswrong")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let nats = try SecuredNats(dir: dir)

        // Malformed files: one line at start-up, exit 2.
        let bad = "\(dir)/bad.nk"
        try Data("SUNOTAVALIDSEED\n".utf8).write(to: URL(fileURLWithPath: bad))
        for flag in ["-nats-nkey", "-nats-creds"] {
            let result = try runPulse(["-bootstrap", "-nats", nats.url, flag, bad, "-data-dir", "\(dir)/d0"])
            XCTAssertEqual(result.status, 2, result.stderr)
            XCTAssertEqual(result.stderr.split(separator: "\n").count, 1, result.stderr)
            XCTAssertTrue(result.stderr.contains(flag), result.stderr)
        }
        let missing = try runPulse(["-bootstrap", "-nats-nkey", "\(dir)/none.nk", "-data-dir", "\(dir)/d0"])
        XCTAssertEqual(missing.status, 2, missing.stderr)

        // A well-formed seed the server does not know: a clear line, connected 0.
        let stranger = "\(dir)/stranger.nk"
        try Data("\(NatsAuth.generateUser().seed)\n".utf8).write(to: URL(fileURLWithPath: stranger))
        let admin = Harness.freePort()
        let pulse = try PulseProcess(
            arguments: [
                "-bootstrap", "-cluster", "chorus-aus-01", "-nats", nats.url, "-nats-nkey", stranger,
                "-data-dir", "\(dir)/d1", "-admin-port", "\(admin)",
            ], logPath: "\(dir)/stranger.log")
        defer { pulse.stop() }
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { pulse.log.lowercased().contains("authorization violation") }, pulse.log)
        XCTAssertEqual(metric(get(admin, "/metrics"), #"backbeat_nats_connected{connection="beat"}"#), 0)

        // A wrong password in the URL: never in the logs or /health.
        let secret = "WrongSecret\(UInt32.random(in: 1...UInt32.max))"
        let admin2 = Harness.freePort()
        let other = try PulseProcess(
            arguments: [
                "-bootstrap", "-cluster", "chorus-aus-01", "-nats", "nats://consumer:\(secret)@127.0.0.1:\(nats.port)",
                "-data-dir", "\(dir)/d2", "-admin-port", "\(admin2)",
            ], logPath: "\(dir)/other.log")
        defer { other.stop() }
        var health = ""
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                health = self.get(admin2, "/health")
                return health.contains("not connected")
            }, health)
        XCTAssertTrue(Harness.waitUntil(seconds: 5) { other.log.contains("NATS") }, other.log)
        XCTAssertFalse(health.contains(secret), health)
        XCTAssertTrue(health.contains("***@127.0.0.1"), health)
        XCTAssertFalse(other.log.contains(secret), other.log)
    }
}
