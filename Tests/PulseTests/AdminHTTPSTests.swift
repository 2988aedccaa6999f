// `pulse backup` and `pulse members` through a TLS-terminating proxy on
// loopback (scripts/tls-proxy.py, Python's ssl module), as operators put
// nginx or a load balancer in front of the admin API: the certificate
// checked against --ca and the URL's host, the token from a file.
import Foundation
import Glibc
import XCTest

@testable import Pulse

final class AdminHTTPSTests: XCTestCase {
    /// A running proxy; terminated when released.
    final class Proxy {
        let port = Harness.freePort()
        private let process = Process()

        init(upstream: Int, cert: String, key: String) throws {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            process.arguments = [
                DeployTests.repoRoot.appendingPathComponent("scripts/tls-proxy.py").path, "\(port)", "\(upstream)",
                cert, key, "60",
            ]
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            guard Harness.waitUntil(seconds: 10, { Harness.canConnect(port: self.port) }) else {
                throw NSError(domain: "tls-proxy did not start", code: 1)
            }
        }

        deinit {
            process.terminate()
            process.waitUntilExit()
        }
    }

    func testBackupAndMembersOverHTTPSWithACA() throws {
        let dir = Harness.tempDir("admin-https")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let certs = Harness.sh(
            "CERT_IP=127.0.0.1 \(DeployTests.repoRoot.path)/scripts/certs.sh \(dir)/certs localhost && "
                + "\(DeployTests.repoRoot.path)/scripts/certs.sh \(dir)/certs elsewhere")
        XCTAssertEqual(certs.status, 0, certs.output)
        try "https-secret\n".write(toFile: dir + "/token", atomically: true, encoding: .utf8)

        let nats = try NatsServer()
        let admin = Harness.freePort()
        let raft = Harness.freePort()
        let node = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "300", "-max-bpm", "600", "-cluster", "tls", "-node-id", "n1", "-nats",
                nats.url, "-raft-bind", "127.0.0.1:\(raft)", "-peers", "n1@127.0.0.1:\(raft)", "-data-dir",
                dir + "/n1", "-admin-port", "\(admin)",
            ], logPath: dir + "/n1.log", environment: ["BACKBEAT_ADMIN_TOKEN_FILE": dir + "/token"])
        defer { node.stop(timeout: 5) }
        XCTAssertTrue(
            Harness.waitUntil(seconds: 15) {
                (try? RawClient(port: admin, timeoutMs: 1000))?.request(httpRequest("GET", "/ready"))?.status == 200
            }, node.log)
        let proxy = try Proxy(upstream: admin, cert: "\(dir)/certs/localhost.pem", key: "\(dir)/certs/localhost.key")
        let ca = "\(dir)/certs/ca.pem"

        // By IP and by name, the token from a file; the backup validates.
        let out = dir + "/over-tls.backup.json"
        let backup = try runPulse([
            "backup", "--admin", "https://127.0.0.1:\(proxy.port)", "--ca", ca, "--token-file", dir + "/token",
            "--out", out,
        ])
        XCTAssertEqual(backup.status, 0, backup.stderr + node.log)
        let file = try BackupFile.parse([UInt8](try Data(contentsOf: URL(fileURLWithPath: out))))
        XCTAssertEqual(file.clusterId, "tls")
        let members = try runPulse(
            ["members", "list", "--admin", "https://localhost:\(proxy.port)/", "--ca", ca],
            environment: ["BACKBEAT_ADMIN_TOKEN_FILE": dir + "/token"])
        XCTAssertEqual(members.status, 0, members.stderr)
        XCTAssertTrue(members.stdout.contains("* n1\t127.0.0.1:\(raft)"), members.stdout)

        // The token file is the node's: without it the node says 401.
        let refused = try runPulse([
            "backup", "--admin", "https://127.0.0.1:\(proxy.port)", "--ca", ca, "--out", dir + "/x.json",
        ])
        XCTAssertEqual(refused.status, 1, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("unauthorized"), refused.stderr)

        // Not trusted without the CA; a certificate for another name is refused.
        let untrusted = try runPulse(["members", "list", "--admin", "https://127.0.0.1:\(proxy.port)"])
        XCTAssertEqual(untrusted.status, 1, untrusted.stderr)
        XCTAssertTrue(untrusted.stderr.contains("certificate not trusted"), untrusted.stderr)
        XCTAssertTrue(untrusted.stderr.contains("--ca"), untrusted.stderr)
        let other = try Proxy(upstream: admin, cert: "\(dir)/certs/elsewhere.pem", key: "\(dir)/certs/elsewhere.key")
        let wrongName = try runPulse(["members", "list", "--admin", "https://localhost:\(other.port)", "--ca", ca])
        XCTAssertEqual(wrongName.status, 1, wrongName.stderr)
        XCTAssertTrue(wrongName.stderr.contains("mismatch"), wrongName.stderr)
        // Plain HTTP to the TLS port is not an answer; TLS to the plain port fails the handshake.
        let plainToTLS = try runPulse(["members", "list", "--admin", "http://127.0.0.1:\(proxy.port)"])
        XCTAssertEqual(plainToTLS.status, 1, plainToTLS.stderr)
        let tlsToPlain = try runPulse(["members", "list", "--admin", "https://127.0.0.1:\(admin)", "--ca", ca])
        XCTAssertEqual(tlsToPlain.status, 1, tlsToPlain.stderr)
        XCTAssertTrue(tlsToPlain.stderr.contains("TLS handshake failed"), tlsToPlain.stderr)
        // Bad options are one line and exit status 2.
        for arguments in [
            ["--ca", dir + "/none.pem"], ["--token", "a", "--token-file", dir + "/token"],
            ["--token-file", dir + "/none"],
        ] {
            let bad = try runPulse(["members", "list", "--admin", "https://127.0.0.1:\(proxy.port)"] + arguments)
            XCTAssertEqual(bad.status, 2, "\(arguments): \(bad.stderr)")
            XCTAssertEqual(bad.stderr.split(separator: "\n").count, 1, bad.stderr)
        }
    }

    func testAdminURLs() throws {
        XCTAssertEqual(try AdminClient.parseURL("https://n1.example"), .init(host: "n1.example", port: 443, tls: true))
        XCTAssertEqual(try AdminClient.parseURL("https://[::1]/"), .init(host: "::1", port: 443, tls: true))
        XCTAssertEqual(try AdminClient.parseURL("https://h:8443"), .init(host: "h", port: 8443, tls: true))
        XCTAssertEqual(try AdminClient.parseURL("http://h:8080/"), .init(host: "h", port: 8080, tls: false))
        XCTAssertEqual(try AdminClient.parseURL("h:8080"), .init(host: "h", port: 8080, tls: false))
        for bad in ["http://h", "https://h:0", "ftp://h:1", "https://h:1/admin", "https://", ":80"] {
            XCTAssertThrowsError(try AdminClient.parseURL(bad), bad)
        }
    }
}
