// `-election nats-kv -kv-replicas 3` refuses a nats-server older than 2.11
// (issue 21, review of 2026-12-07, finding 2: JetStream's compare-and-set is
// not linearizable on replicated streams before it), with one start-up line
// naming the minimum, unless `-kv-allow-old-server`. Against a stand-in
// server that announces a chosen version in its INFO line, and against the
// installed nats-server.
import Foundation
import Glibc
import PulsePolicy
import XCTest

@testable import Pulse

/// A TCP listener on loopback that sends `INFO {"version":…}` to each
/// connection and closes it: what a NATS server says first, and nothing more.
private final class InfoOnlyServer: @unchecked Sendable {
    let port: Int
    private let fd: Int32
    private let thread: Thread

    init(version: String) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let fd = self.fd
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p in
                bind(fd, p, length) == 0 && listen(fd, 8) == 0 && getsockname(fd, p, &length) == 0
            }
        }
        guard bound else { throw NSError(domain: "InfoOnlyServer: cannot listen", code: 1) }
        port = Int(UInt16(bigEndian: address.sin_port))
        let line = #"INFO {"server_id":"FAKE","version":"\#(version)","proto":1,"max_payload":1048576}"# + "\r\n"
        thread = Thread {
            // Bounded: at most 32 connections, each answered at once.
            for _ in 0..<32 {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&pfd, 1, 20_000) > 0 else { return }
                let client = accept(fd, nil, nil)
                guard client >= 0 else { return }
                _ = line.withCString { write(client, $0, strlen($0)) }
                usleep(50_000)
                close(client)
            }
        }
        thread.start()
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }
}

final class KVLeaseServerVersionProcessTests: XCTestCase {
    private func errorLines(_ stderr: String) -> [Substring] {
        stderr.split(separator: "\n").filter { $0.contains("pulse: error") }
    }

    private func start(_ nats: String, _ extra: [String] = []) throws -> (status: Int32, stdout: String, stderr: String)
    {
        let dir = Harness.tempDir("kvversion")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        return try runPulse(
            [
                "-election", "nats-kv", "-kv-replicas", "3", "-cluster", "kvversion", "-nats", nats, "-admin-port", "0",
                "-data-dir", "\(dir)/k1", "-kv-start-wait-ms", "0",
            ] + extra, timeout: 20)
    }

    func testAServerOlderThan2_11IsRefusedWithOneLineUnlessAllowed() throws {
        let old = try InfoOnlyServer(version: "2.10.22")
        let refused = try start("nats://127.0.0.1:\(old.port)")
        XCTAssertEqual(refused.status, 1, refused.stderr)
        let lines = errorLines(refused.stderr)
        XCTAssertEqual(lines.count, 1, refused.stderr)
        XCTAssertTrue(lines.first?.contains("nats-server 2.10.22") ?? false, refused.stderr)
        XCTAssertTrue(lines.first?.contains("needs nats-server 2.11 or later") ?? false, refused.stderr)
        XCTAssertTrue(lines.first?.contains("-kv-allow-old-server") ?? false, refused.stderr)

        // With the override the version is no reason to stop (this stand-in
        // then fails the NATS handshake: another line, not the version's).
        let allowed = try start("nats://127.0.0.1:\(old.port)", ["-kv-allow-old-server"])
        XCTAssertNotEqual(allowed.status, 0, allowed.stderr)
        XCTAssertFalse(allowed.stderr.contains("older than 2.11"), allowed.stderr)

        // A 2.11 server passes the check (and fails the handshake likewise).
        let new = try InfoOnlyServer(version: "2.11.0")
        let passed = try start("nats://127.0.0.1:\(new.port)")
        XCTAssertFalse(passed.stderr.contains("older than 2.11"), passed.stderr)
        XCTAssertFalse(passed.stderr.contains("announces no version"), passed.stderr)
        // Past the check: the same one line as the overridden 2.10 (the
        // handshake), not a refusal for any other reason (review of
        // 2026-12-07 11:25, item 7: absent strings alone passed if it died early).
        func past(_ run: (status: Int32, stdout: String, stderr: String), _ port: Int) -> [String] {
            errorLines(run.stderr).map { $0.replacingOccurrences(of: "\(port)", with: "PORT") }
        }
        XCTAssertNotEqual(passed.status, 0, passed.stderr)
        XCTAssertEqual(past(passed, new.port).count, 1, passed.stderr)
        XCTAssertEqual(past(passed, new.port), past(allowed, old.port), passed.stderr + allowed.stderr)
    }

    /// The installed nats-server (Debian's 2.9.10 here): refused with R3
    /// when older than 2.11, which is why the R3 process tests pass
    /// `-kv-allow-old-server` (docs/decisions.md).
    func testTheInstalledServerIsJudgedByTheVersionItAnnounces() throws {
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: NatsServer.binary)
        probe.arguments = ["--version"]
        let out = Pipe()
        probe.standardOutput = out
        try probe.run()
        probe.waitUntilExit()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let installed = try XCTUnwrap(
            text.split(separator: " ").last.map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) }
                .flatMap(NatsServerVersion.init), text)
        let server = try NatsServer(jetStream: true)
        let result = try start(server.url)
        if installed < NatsServerVersion.linearizableCAS {
            XCTAssertEqual(result.status, 1, result.stderr)
            XCTAssertEqual(errorLines(result.stderr).count, 1, result.stderr)
            XCTAssertTrue(result.stderr.contains("nats-server \(installed)"), result.stderr)
        } else {
            XCTAssertFalse(result.stderr.contains("older than 2.11"), result.stderr)
        }
    }
}
