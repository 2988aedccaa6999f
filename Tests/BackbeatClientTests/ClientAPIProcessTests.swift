// BackbeatClient's timing API against real processes: connect fails within
// its timeout with one error when no pulse answers (and the example prints
// it as one line and exits 1); requestTempo changes the tempo and returns
// the API's refusals unchanged; the fractional position agrees with every
// frame's instant to the nanosecond; the clock offset of a client whose
// clock runs 1.5 s ahead is found within its error bound, sampled continuously.
import BackbeatClient
import Foundation
import Glibc
import PulseCore
import XCTest

final class ClientAPIProcessTests: XCTestCase {
    func testConnectWithNoPulseFailsWithinItsTimeoutWithOneError() async throws {
        let nats = try NatsServerProcess()
        var options = BackbeatClientOptions(url: nats.url, clusterId: "nobody")
        options.connectTimeoutMs = 1500
        let began = Date()
        do {
            _ = try await BackbeatClient.connect(options)
            XCTFail("connected with no pulse")
        } catch BackbeatClientError.noPulse(let server, let subject, let waitedMs, let timeoutMs, _) {
            let took = Date().timeIntervalSince(began)
            XCTAssertEqual(subject, "backbeat.nobody.request.timeline")
            XCTAssertEqual(server, nats.url)
            XCTAssertEqual(timeoutMs, 1500)
            XCTAssertGreaterThanOrEqual(waitedMs, 1500)
            XCTAssertTrue(took >= 1.5 && took < 3, "took \(took) s")
        }
        do {
            _ = try await BackbeatClient.connect(options)
        } catch {
            let line = "\(error)"
            for part in ["backbeat.nobody.request.timeline", nats.url, "1.5 s"] {
                XCTAssertTrue(line.contains(part), "\(line) does not name \(part)")
            }
            XCTAssertFalse(line.contains("\n"))
        }
        // No NATS at all: the same error, naming the server, within the timeout.
        var dead = BackbeatClientOptions(url: "nats://127.0.0.1:\(Proc.freePort())", clusterId: "nobody")
        dead.connectTimeoutMs = 1000
        let start = Date()
        do {
            _ = try await BackbeatClient.connect(dead)
            XCTFail("connected to nothing")
        } catch BackbeatClientError.noPulse(let server, let subject, _, _, _) {
            XCTAssertEqual(server, dead.url)
            XCTAssertEqual(subject, "")
            XCTAssertLessThan(Date().timeIntervalSince(start), 2.5)
        }

        // The example: one line on stderr, exit status 1.
        let example = Process()
        example.executableURL = Proc.binDir.appendingPathComponent("backbeat-example")
        example.arguments = [nats.url, "nobody", "1"]
        let stderr = Pipe()
        example.standardError = stderr
        example.standardOutput = FileHandle.nullDevice
        try example.run()
        let output = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        example.waitUntilExit()
        XCTAssertEqual(example.terminationStatus, 1)
        XCTAssertEqual(output.filter { $0 == "\n" }.count, 1, output)
        XCTAssertTrue(output.contains("backbeat.nobody.request.timeline") && output.contains(nats.url), output)
    }

    func testRequestTempoPositionAndClockOffset() async throws {
        let nats = try NatsServerProcess()
        let dir = Proc.tempDir("api")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (node, admin) = try PulseNodeProcess.single(cluster: "api", bpm: 240, nats: nats.url, dir: dir)
        defer { node.stop() }
        // This client's clock runs 1.5 s ahead of the node's.
        let skew: Int64 = 1_500_000_000
        var options = BackbeatClientOptions(url: nats.url, clusterId: "api")
        options.connectTimeoutMs = 10_000
        options.clockSampleIntervalMs = 200
        options.localClock = { BackbeatClient.localNs() + skew }
        let client = try await BackbeatClient.connect(options)
        defer { client.close() }

        let scheduled = try await client.requestTempo(bpm: 252, justification: "swift client test")
        XCTAssertEqual(scheduled.tempoBpm, 252)
        XCTAssertEqual(scheduled.previousBpm, 240)
        XCTAssertEqual(scheduled.applyAtBeat % 8, 0)
        XCTAssertEqual(scheduled.justification, "swift client test")
        // Refusals come back unchanged: the status and code the admin API answers.
        for bpm: Int64 in [260, 1000, 0] {
            do {
                _ = try await client.requestTempo(bpm: bpm, justification: "again")
                XCTFail("\(bpm) accepted")
            } catch let refusal as TempoRequestRefused {
                let http = try XCTUnwrap(
                    Proc.http(
                        "POST", port: admin, path: "/tempo", body: #"{"tempo_bpm":\#(bpm),"justification":"again"}"#))
                XCTAssertEqual(refusal.status, http.status, "\(bpm)")
                XCTAssertEqual(refusal.code, Proc.json(http.body)["code"] as? String, "\(bpm)")
                XCTAssertFalse(refusal.code.isEmpty)
            }
        }

        var changed: (bpm: Int64, atBeat: Int64)?
        var beats = 0
        let watchdog = Task {
            try? await Task.sleep(nanoseconds: 20_000_000_000)
            client.close()
        }
        defer { watchdog.cancel() }
        for await event in client.events {
            switch event {
            case .tempoChanged(let bpm, _, let atBeat): changed = (bpm, atBeat)
            case .beat(let beat):
                beats += 1
                let t = try XCTUnwrap(client.timeline)
                let k = beat.index
                let instant = t.instantNs(ofBeat: k)
                let length = t.instantNs(ofBeat: k + 1) - instant
                // To the nanosecond: at the instant, beat k and 0 ns into it; 1 ns before, the last ns of k-1.
                XCTAssertEqual(try client.position(at: instant), BeatPosition(beat: k, offsetNs: 0, lengthNs: length))
                let before = try client.position(at: instant - 1)
                XCTAssertEqual([before.beat, before.offsetNs], [k - 1, before.lengthNs - 1])
                XCTAssertEqual(try client.beatAtTime(instant), Double(k))
                XCTAssertEqual(try client.phaseAtTime(instant, quantum: 8), Double(k % 8))
                XCTAssertEqual(beat.instantNs, instant)
                XCTAssertEqual(beat.frame.deadlineUnixMs, t.timeline.deadlineUnixMs(ofBeat: k))
                // Arrival on the estimated timeline clock: after the instant, or before it by less than the bound.
                let bound = client.clockOffset?.boundNs ?? 0
                XCTAssertGreaterThanOrEqual(beat.receivedNs, instant - bound, "beat \(k)")
                XCTAssertLessThan(beat.receivedNs, instant + length, "beat \(k)")
            default: break
            }
            if let changed, beats > 0, changed.atBeat > 0 { break }
        }
        XCTAssertEqual(changed?.bpm, 252, node.log)
        XCTAssertEqual(changed?.atBeat, scheduled.applyAtBeat, "applied where it was scheduled")

        let estimate = try XCTUnwrap(client.clockOffset)
        XCTAssertLessThan(estimate.boundNs, 20_000_000)
        XCTAssertLessThanOrEqual(abs(estimate.offsetNs + skew), estimate.boundNs, "\(estimate), true offset \(-skew)")
        // Kept continuously: a sample every 200 ms.
        let before = estimate.samples
        try await Task.sleep(nanoseconds: 2_000_000_000)
        XCTAssertGreaterThanOrEqual((client.clockOffset?.samples ?? 0) - before, 5)
        print("swift client: clock offset \(estimate.offsetNs) ± \(estimate.boundNs) ns (true \(-skew))")
    }
}

/// nkey users and TLS with client certificates (the server verifies them):
/// the pulse and the Swift client each with their own nkey and certificate.
final class ClientAuthProcessTests: XCTestCase {
    // Throwaway nkey users made for this test (nkeys.CreateUser); never used elsewhere.
    static let pulseUser = (
        seed: "SUAMUHHRDGFNKFOFIUPHVXUQMT2QLWBPBUYAFTMNFMJGBQELQC3OMWSAX4",
        publicKey: "UAR7X2JLJV2DH7QWPDY7BPPI4XSV3GHIHYPWTOYREZ3IHEDYA5ITSLZB"
    )
    static let clientUser = (
        seed: "SUAIVUO4ZIVM6XSWX57FDL6JVWNR2K7XDZZGCM24OPHZKYMXGCX7NO3L4Q",
        publicKey: "UB5KSK56FR25VWRZIS7FAC53YVHLAJVBD5HRXU5V5TA3244JON224DVN"
    )

    func testNKeyAndClientCertificate() async throws {
        let dir = Proc.tempDir("auth")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var root = URL(fileURLWithPath: #filePath)
        while root.lastPathComponent != "Tests" { root.deleteLastPathComponent() }
        let certs = Process()
        certs.executableURL = root.deletingLastPathComponent().appendingPathComponent("scripts/certs.sh")
        certs.arguments = [dir, "server", "client"]
        certs.environment = ["CERT_IP": "127.0.0.1", "PATH": "/usr/bin:/bin"]
        certs.standardOutput = FileHandle.nullDevice
        try certs.run()
        certs.waitUntilExit()
        XCTAssertEqual(certs.terminationStatus, 0)
        for (name, seed) in [("pulse", Self.pulseUser.seed), ("client", Self.clientUser.seed)] {
            try Data((seed + "\n").utf8).write(to: URL(fileURLWithPath: "\(dir)/\(name).nk"))
        }
        let conf = """
            tls { cert_file: "\(dir)/server.pem", key_file: "\(dir)/server.key", ca_file: "\(dir)/ca.pem", verify: true }
            authorization { users: [ { nkey: \(Self.pulseUser.publicKey) }, { nkey: \(Self.clientUser.publicKey) } ] }
            """
        try Data(conf.utf8).write(to: URL(fileURLWithPath: "\(dir)/nats.conf"))
        let nats = try NatsServerProcess(arguments: ["-c", "\(dir)/nats.conf"])
        let url = "tls://127.0.0.1:\(nats.port)"
        let (node, _) = try PulseNodeProcess.single(
            cluster: "auth", bpm: 240, nats: url, dir: dir,
            extra: [
                "-nats-nkey", "\(dir)/pulse.nk", "-nats-ca", "\(dir)/ca.pem", "-nats-cert", "\(dir)/client.pem",
                "-nats-key", "\(dir)/client.key",
            ])
        defer { node.stop() }

        var options = BackbeatClientOptions(url: url, clusterId: "auth", caFile: "\(dir)/ca.pem")
        options.certificate = ("\(dir)/client.pem", "\(dir)/client.key")
        options.connectTimeoutMs = 10_000
        var withoutKey = options
        options.nkey = ("\(dir)/client.nk", Self.clientUser.publicKey)
        let client: BackbeatClient
        do {
            client = try await BackbeatClient.connect(options)
        } catch {
            return XCTFail("\(error)\n\(node.log)")
        }
        defer { client.close() }
        var beats = 0
        let watchdog = Task {
            try? await Task.sleep(nanoseconds: 10_000_000_000)
            client.close()
        }
        defer { watchdog.cancel() }
        for await event in client.events {
            if case .beat = event { beats += 1 }
            if beats == 3 { break }
        }
        XCTAssertEqual(beats, 3, node.log)

        // Without the nkey the server refuses: connect says so at once, naming the server.
        withoutKey.connectTimeoutMs = 3000
        let began = Date()
        do {
            _ = try await BackbeatClient.connect(withoutKey)
            XCTFail("connected without the nkey")
        } catch BackbeatClientError.noPulse(let server, let subject, _, _, let cause) {
            XCTAssertEqual(server, url)
            XCTAssertEqual(subject, "")
            XCTAssertTrue(cause.lowercased().contains("authoriz") || cause.lowercased().contains("permit"), cause)
            XCTAssertLessThan(Date().timeIntervalSince(began), 2.5, "an authorization error is not retried")
        }
    }
}
