// Raft over mutual TLS (issue #11), with real `pulse` processes, certificates
// made by scripts/certs.sh and a real nats-server: a 3-node cluster forms,
// publishes and fails over; refusals (another CA, a name not in -peers, plain
// TCP on a TLS port, a handshake that never completes, a member's certificate
// speaking for another) are closed and counted; SIGHUP rotates certificates
// without losing the leader. Plus the pure identity rule.
import COpenSSL
import Foundation
import Glibc
import Raft
import XCTest

@testable import Pulse

final class RaftTLSTests: XCTestCase {
    // MARK: pure

    func peer(_ spec: String) throws -> Peer { try PeerList.parsePeer(spec) }

    func testIdentityRule() throws {
        let peers = try ["n1@127.0.0.1:7001", "n2@127.0.0.1:7002", "10.0.0.3:7003"].map(peer)
        XCTAssertEqual(PeerIdentity.match(names: ["DNS:n1"], peers: peers), .peer(peers[0]))
        XCTAssertEqual(PeerIdentity.match(names: ["DNS:n2", "IP:127.0.0.1"], peers: peers), .peer(peers[1]))
        // An IP names a member only when no other member shares the host.
        XCTAssertEqual(PeerIdentity.match(names: ["IP:127.0.0.1"], peers: peers), .none)
        XCTAssertEqual(PeerIdentity.match(names: ["IP:10.0.0.3"], peers: peers), .peer(peers[2]))
        // A peer without an id is not named by DNS:host:port.
        XCTAssertEqual(PeerIdentity.match(names: ["DNS:10.0.0.3:7003"], peers: peers), .none)
        XCTAssertEqual(PeerIdentity.match(names: ["DNS:intruder", "URI:raft://n1"], peers: peers), .none)
        XCTAssertEqual(PeerIdentity.match(names: ["DNS:n1", "DNS:n2"], peers: peers), .ambiguous)
        XCTAssertEqual(PeerIdentity.match(names: [], peers: peers), .none)
    }

    // MARK: certificates

    static var repoRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
    }

    /// Runs scripts/certs.sh with `arguments`.
    static func certs(_ arguments: [String], environment: [String: String] = [:]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = [repoRoot.appendingPathComponent("scripts/certs.sh").path] + arguments
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        process.environment = env
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw NSError(domain: "certs.sh \(arguments)", code: 1) }
    }

    func raftRejections(_ cluster: PulseCluster, _ i: Int) -> [String: Double] {
        var out: [String: Double] = [:]
        for line in ((try? cluster.metrics(i)) ?? "").split(separator: "\n")
        where line.hasPrefix("backbeat_rejected_input_total{") && line.contains("surface=\"raft\"") {
            guard let start = line.range(of: "reason=\"")?.upperBound, let end = line[start...].firstIndex(of: "\""),
                let value = line.split(separator: " ").last.flatMap({ Double($0) })
            else { continue }
            out[String(line[start..<end]), default: 0] += value
        }
        return out
    }

    func waitForRejection(
        _ cluster: PulseCluster, _ i: Int, _ reason: String, atLeast n: Double, seconds: Double = 5
    ) -> Bool {
        Harness.waitUntil(seconds: seconds) { (self.raftRejections(cluster, i)[reason] ?? 0) >= n }
    }

    /// A transport v2 frame carrying `message` (nil: a keepalive).
    static func frame(_ message: Message?) -> [UInt8] {
        var payload: [UInt8] = []
        message?.encode(into: &payload)
        var out: [UInt8] = [0xBB, 2, 0, 0]
        for k in 0..<4 { out.append(UInt8(truncatingIfNeeded: UInt32(payload.count) >> (8 * k))) }
        out += [UInt8](repeating: 0, count: 24)
        return out + payload
    }

    // MARK: processes

    func testTLSClusterFormsPublishesAndFailsOverWithinOneSecond() throws {
        let cluster = try PulseCluster(cluster: "tlsfail", bpm: 600, tls: true)
        let subscriber = try Subscriber(url: cluster.nats.url, subject: "backbeat.tlsfail.beat")
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        XCTAssertTrue(subscriber.wait(for: 5, seconds: 10), cluster.logs)
        XCTAssertTrue(cluster.logs.contains("tls=true"), "the peers connected over TLS\n\(cluster.logs)")
        XCTAssertFalse(cluster.logs.contains("plain TCP"), "no plain-TCP warning on loopback")
        let oldSuffix = String(cluster.names[leader].suffix(4))
        let killedNs = HostilePeerTests.realtimeNs()
        cluster.nodes[leader]?.signal(SIGKILL)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                subscriber.received.contains { ($0.object["hlc"] as? String)?.hasSuffix(":" + oldSuffix) == false }
            }, cluster.logs)
        let first = try XCTUnwrap(
            subscriber.received.first {
                $0.receivedNs > killedNs && ($0.object["hlc"] as? String)?.hasSuffix(":" + oldSuffix) == false
            })
        let failoverMs = Double(first.receivedNs - killedNs) / 1e6
        XCTAssertLessThanOrEqual(failoverMs, 1000, "first frame from the new leader \(failoverMs) ms after the kill")
        let indices = subscriber.received.compactMap { ($0.object["beat_index"] as? NSNumber)?.int64Value }
        for (a, b) in zip(indices, indices.dropFirst()) { XCTAssertGreaterThan(b, a, "no repeated index") }
        cluster.nodes[leader] = nil
    }

    /// SIGTERM of the TLS leader: it hands leadership over (TimeoutNow over
    /// the TLS connection) before it exits, so the successor's first frame
    /// carries the index right after the old leader's last, as over plain TCP.
    func testTLSSigtermOfTheLeaderMissesNoBeat() throws {
        let cluster = try PulseCluster(cluster: "tlsgraceful", bpm: 300, tls: true)
        let subscriber = try Subscriber(url: cluster.nats.url, subject: "backbeat.tlsgraceful.beat")
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        XCTAssertTrue(subscriber.wait(for: 4, seconds: 10), cluster.logs)
        XCTAssertTrue(cluster.logs.contains("tls=true"), "the peers connected over TLS\n\(cluster.logs)")
        let oldSuffix = ":" + String(cluster.names[leader].suffix(4))
        let status = try XCTUnwrap(cluster.nodes[leader]).stop()
        cluster.nodes[leader] = nil
        XCTAssertEqual(status, 0, "the leader exits cleanly on SIGTERM\n\(cluster.logs)")
        let before = subscriber.count
        XCTAssertTrue(subscriber.wait(for: before + 8, seconds: 10), cluster.logs)
        let list = subscriber.received.compactMap { frame -> (index: Int64, old: Bool)? in
            guard let index = (frame.object["beat_index"] as? NSNumber)?.int64Value,
                let hlc = frame.object["hlc"] as? String
            else { return nil }
            return (index, hlc.hasSuffix(oldSuffix))
        }
        for (a, b) in zip(list, list.dropFirst()) {
            XCTAssertEqual(b.index, a.index + 1, "no beat missed or repeated across the handover\n\(cluster.logs)")
        }
        // The handover itself: the successor's first frame is the old leader's last + 1.
        let lastOld = try XCTUnwrap(list.lastIndex { $0.old }, "frames from the old leader")
        XCTAssertLessThan(lastOld + 1, list.count, "a new leader took over\n\(cluster.logs)")
        if lastOld + 1 < list.count {
            XCTAssertFalse(list[lastOld + 1].old)
            XCTAssertEqual(list[lastOld + 1].index, list[lastOld].index + 1, "0 missed\n\(cluster.logs)")
        }
    }

    func testRefusalsAreClosedAndCounted() throws {
        let cluster = try PulseCluster(cluster: "tlsrefuse", bpm: 600, tls: true)
        let subscriber = try Subscriber(url: cluster.nats.url, subject: "backbeat.tlsrefuse.beat")
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        XCTAssertTrue(subscriber.wait(for: 3, seconds: 10), cluster.logs)
        let target = (leader + 1) % 3
        let port = cluster.raftPorts[target]
        let dir = cluster.certDir
        let otherCA = dir + "/other"
        try Self.certs([otherCA, "n1"])
        try Self.certs(["-with-ca", dir, dir, "intruder"])
        let start = subscriber.count

        // Connections that never complete a handshake: one silent, one that
        // stops after a TLS record header.
        let silent = try RawClient(port: port, timeoutMs: 6000)
        let stalled = try RawClient(port: port, timeoutMs: 6000)
        XCTAssertTrue(stalled.send(bytes: [0x16, 0x03, 0x01, 0x00, 0x80]))

        // Another CA.
        let foreign = TLSClient(port: port, cert: "\(otherCA)/n1.pem", key: "\(otherCA)/n1.key", ca: "\(dir)/ca.pem")
        XCTAssertTrue(foreign.waitForClose(), "a certificate from another CA is refused")
        XCTAssertTrue(waitForRejection(cluster, target, "tls_untrusted_certificate", atLeast: 1), cluster.logs)

        // A valid certificate whose name is not in -peers.
        let intruder = TLSClient(
            port: port, cert: "\(dir)/intruder.pem", key: "\(dir)/intruder.key", ca: "\(dir)/ca.pem")
        XCTAssertTrue(intruder.handshakeDone, "the intruder's certificate chains to the CA")
        XCTAssertTrue(intruder.waitForClose(), "a name not in -peers is refused")
        XCTAssertTrue(waitForRejection(cluster, target, "tls_unknown_peer", atLeast: 1), cluster.logs)

        // A member's certificate (n3's, say) speaking for another member.
        let ids = cluster.names.map(PeerList.stableId)
        let thief = (target + 1) % 3
        let victim = (target + 2) % 3
        let member = TLSClient(
            port: port, cert: "\(dir)/\(cluster.names[thief]).pem", key: "\(dir)/\(cluster.names[thief]).key",
            ca: "\(dir)/ca.pem")
        let forged = Self.frame(Message(kind: .heartbeat, from: ids[victim], to: ids[target], term: 1, commit: 0))
        XCTAssertTrue(member.send(forged))
        XCTAssertTrue(member.waitForClose(), "frames from another member than the certificate's are refused")
        XCTAssertTrue(waitForRejection(cluster, target, "tls_identity_mismatch", atLeast: 1), cluster.logs)

        // Plain TCP on a TLS port.
        let plain = try RawClient(port: port)
        _ = plain.send(bytes: Self.frame(nil))
        XCTAssertTrue(plain.waitForClose(), "a plain-TCP client is refused")
        XCTAssertTrue(waitForRejection(cluster, target, "tls_required", atLeast: 1), cluster.logs)

        XCTAssertTrue(silent.waitForClose(), "a silent connection is closed after the handshake timeout")
        XCTAssertTrue(stalled.waitForClose(), "a stalled handshake is closed after the timeout")
        XCTAssertTrue(waitForRejection(cluster, target, "handshake_timeout", atLeast: 2), cluster.logs)

        // Beats unaffected: one publisher, consecutive indices, same leader.
        XCTAssertTrue(subscriber.wait(for: subscriber.count + 5, seconds: 5), cluster.logs)
        let indices = subscriber.received[start...].compactMap { ($0.object["beat_index"] as? NSNumber)?.int64Value }
        for (a, b) in zip(indices, indices.dropFirst()) { XCTAssertEqual(b, a + 1, "no beat missed\n\(cluster.logs)") }
        XCTAssertEqual(cluster.leader(), leader, "the leader is undisturbed")
        for i in 0..<3 { XCTAssertTrue(cluster.nodes[i]?.process.isRunning ?? false) }
    }

    func testSighupRotatesCertificatesAndKeepsTheLeader() throws {
        let cluster = try PulseCluster(cluster: "tlsrotate", bpm: 300, tls: true)
        let leader = try XCTUnwrap(cluster.leader(), cluster.logs)
        let term = try XCTUnwrap(
            ((cluster.get(leader, "/leader")["stats"] as? [String: Any])?["term"] as? NSNumber)?.uint64Value)
        let dir = cluster.certDir
        // New keys and certificates from the same CA, written over the old files.
        let fresh = dir + "/fresh"
        try Self.certs(["-with-ca", dir, fresh, "n1", "n2", "n3"])
        for name in cluster.names {
            for ext in ["pem", "key"] {
                _ = try? FileManager.default.removeItem(atPath: "\(dir)/\(name).\(ext)")
                try FileManager.default.copyItem(atPath: "\(fresh)/\(name).\(ext)", toPath: "\(dir)/\(name).\(ext)")
            }
        }
        for i in 0..<3 { cluster.nodes[i]?.signal(SIGHUP) }
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) {
                (0..<3).allSatisfy { cluster.nodes[$0]?.log.contains("Raft TLS certificates reloaded") ?? false }
            }, cluster.logs)
        // New connections use the new certificate.
        let target = (leader + 1) % 3
        let client = TLSClient(
            port: cluster.raftPorts[target], cert: "\(dir)/n1.pem", key: "\(dir)/n1.key", ca: "\(dir)/ca.pem")
        XCTAssertTrue(client.handshakeDone)
        XCTAssertTrue(client.serverCertificateEquals(file: "\(fresh)/\(cluster.names[target]).pem"))
        // A broken file: the node keeps its certificates and keeps running.
        try Data("not a certificate".utf8).write(to: URL(fileURLWithPath: "\(dir)/\(cluster.names[target]).pem"))
        cluster.nodes[target]?.signal(SIGHUP)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) { cluster.nodes[target]?.log.contains("not reloaded") ?? false },
            cluster.logs)
        usleep(1_000_000)
        for i in 0..<3 { XCTAssertTrue(cluster.nodes[i]?.process.isRunning ?? false, "node \(i) alive") }
        XCTAssertEqual(cluster.leader(), leader, "the cluster keeps its leader")
        let after = try XCTUnwrap(
            ((cluster.get(leader, "/leader")["stats"] as? [String: Any])?["term"] as? NSNumber)?.uint64Value)
        XCTAssertEqual(after, term, "no election")
    }

    func testStartupRefusesACertificateThatDoesNotNameTheNode() throws {
        let dir = Harness.tempDir("tlsname")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.certs([dir, "n1", "n2"])
        let peers = "n1@127.0.0.1:\(Harness.freePort()),n2@127.0.0.1:\(Harness.freePort())"
        let result = try runPulse([
            "-bootstrap", "-node-id", "n1", "-peers", peers, "-data-dir", "\(dir)/data", "-admin-port", "0",
            "-raft-tls-cert", "\(dir)/n2.pem", "-raft-tls-key", "\(dir)/n2.key", "-raft-tls-ca", "\(dir)/ca.pem",
        ])
        XCTAssertEqual(result.status, 1, result.stderr)
        XCTAssertEqual(result.stderr.split(separator: "\n").count, 1, result.stderr)
        XCTAssertTrue(result.stderr.contains("names DNS:n2, not this node"), result.stderr)
        let partial = try runPulse([
            "-bootstrap", "-node-id", "n1", "-peers", peers, "-raft-tls-cert", "\(dir)/n1.pem",
        ])
        XCTAssertEqual(partial.status, 2, partial.stderr)
        XCTAssertTrue(partial.stderr.contains("-raft-tls-key and -raft-tls-ca together"), partial.stderr)
        // An encrypted key is refused in one line (no pass-phrase prompt that
        // would block the thread, at start-up or in a SIGHUP reload).
        let encrypt = Process()
        encrypt.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        encrypt.arguments = [
            "pkey", "-in", "\(dir)/n1.key", "-out", "\(dir)/n1.enc.key", "-aes256", "-passout", "pass:secret",
        ]
        try encrypt.run()
        encrypt.waitUntilExit()
        XCTAssertEqual(encrypt.terminationStatus, 0)
        let encrypted = try runPulse([
            "-bootstrap", "-node-id", "n1", "-peers", peers, "-data-dir", "\(dir)/data2", "-admin-port", "0",
            "-raft-tls-cert", "\(dir)/n1.pem", "-raft-tls-key", "\(dir)/n1.enc.key", "-raft-tls-ca", "\(dir)/ca.pem",
        ])
        XCTAssertEqual(encrypted.status, 1, encrypted.stderr)
        XCTAssertEqual(encrypted.stderr.split(separator: "\n").count, 1, encrypted.stderr)
    }

    func testPlainTCPWarnsWhenAPeerIsNotOnLoopback() throws {
        let dir = Harness.tempDir("plainwarn")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = Harness.freePort()
        let node = try PulseProcess(
            arguments: [
                "-bootstrap", "-node-id", "n1", "-peers", "n1@127.0.0.1:\(port),n2@192.0.2.7:7000",
                "-raft-bind", "127.0.0.1:\(port)", "-data-dir", "\(dir)/data", "-admin-port", "0",
                "-nats", "nats://127.0.0.1:\(Harness.freePort())",
            ], logPath: "\(dir)/log")
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { node.log.contains("plain TCP to a peer off loopback") }, node.log)
        node.stop()
    }
}

/// A blocking TLS 1.3 client with a client certificate (test side).
final class TLSClient {
    private var fd: Int32 = -1
    private var ctx: OpaquePointer?
    private var ssl: OpaquePointer?
    private(set) var handshakeDone = false

    init(port: Int, cert: String, key: String, ca: String) {
        ctx = copenssl_ctx_new()
        SSL_CTX_use_certificate_chain_file(ctx, cert)
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM)
        SSL_CTX_load_verify_locations(ctx, ca, nil)
        // The test inspects what the server presents; it does not judge it.
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var addr = RaftTransport.ipv4Address("127.0.0.1", port)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard rc == 0, let ssl = SSL_new(ctx) else { return }
        self.ssl = ssl
        SSL_set_fd(ssl, fd)
        handshakeDone = SSL_connect(ssl) == 1
    }

    func send(_ bytes: [UInt8]) -> Bool {
        guard let ssl, handshakeDone else { return false }
        return bytes.withUnsafeBytes { SSL_write(ssl, $0.baseAddress, Int32($0.count)) } == Int32(bytes.count)
    }

    /// Waits (bounded by the 5 s receive timeout, twice) for the server to close.
    func waitForClose() -> Bool {
        guard let ssl else { return true }
        var buffer = [UInt8](repeating: 0, count: 256)
        for _ in 0..<2 {
            let n = buffer.withUnsafeMutableBytes { SSL_read(ssl, $0.baseAddress, Int32($0.count)) }
            if n > 0 { continue }
            let error = SSL_get_error(ssl, n)
            if error == SSL_ERROR_SYSCALL && (errno == EAGAIN || errno == EWOULDBLOCK) { continue }
            return true  // EOF, alert or reset
        }
        return false
    }

    func serverCertificateEquals(file: String) -> Bool {
        guard let ssl, let server = SSL_get1_peer_certificate(ssl), let fp = fopen(file, "r") else { return false }
        defer {
            X509_free(server)
            fclose(fp)
        }
        guard let expected = PEM_read_X509(fp, nil, nil, nil) else { return false }
        defer { X509_free(expected) }
        return X509_cmp(server, expected) == 0
    }

    deinit {
        if let ssl { SSL_free(ssl) }
        if let ctx { SSL_CTX_free(ctx) }
        if fd >= 0 { close(fd) }
    }
}
