// The admin API and tempo changes on a real node: a `pulse` process, a real
// nats-server, HTTP over loopback, and an independent subscriber watching the
// beat stream while the API is used and abused.
import CNats
import Foundation
import Glibc
import XCTest

final class NodeAdminTests: XCTestCase {
    private struct Node {
        let nats: NatsServer
        let process: PulseProcess
        let port: Int
        let dir: String
        let beats: Subscriber
    }

    private func startNode(bpm: Int, cluster: String, extra: [String] = []) throws -> Node {
        let nats = try NatsServer()
        let dir = Harness.tempDir(cluster)
        let port = Harness.freePort()
        let beats = try Subscriber(url: nats.url, subject: "backbeat.\(cluster).beat")
        let process = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "\(bpm)", "-max-bpm", "600", "-cluster", cluster, "-node-id", "node-adm1",
                "-nats", nats.url, "-data-dir", dir + "/data", "-admin-port", "\(port)",
            ] + extra, logPath: dir + "/node.log")
        XCTAssertTrue(Harness.waitUntil(seconds: 10) { (try? RawClient(port: port)) != nil }, process.log)
        return Node(nats: nats, process: process, port: port, dir: dir, beats: beats)
    }

    private func call(_ port: Int, _ method: String, _ path: String, body: String? = nil, headers: [String] = [])
        -> RawResponse?
    {
        guard let client = try? RawClient(port: port) else { return nil }
        return client.request(httpRequest(method, path, body: body, headers: headers))
    }

    private func indices(_ frames: [ReceivedFrame]) -> [Int64] {
        frames.compactMap { ($0.object["beat_index"] as? NSNumber)?.int64Value }
    }

    private func assertNoGap(_ indices: [Int64], file: StaticString = #filePath, line: UInt = #line) {
        for (a, b) in zip(indices, indices.dropFirst()) where b != a + 1 {
            XCTFail("beat \(b) follows \(a): gap or repeat", file: file, line: line)
        }
    }

    func testTempoChangeAppliesOnTheScheduledDownbeat() throws {
        let node = try startNode(bpm: 300, cluster: "tempo")
        defer { node.process.stop() }
        let control = try Subscriber(url: node.nats.url, subject: "backbeat.tempo.control")
        XCTAssertTrue(node.beats.wait(for: 2, seconds: 10), node.process.log)
        let response = try XCTUnwrap(
            call(node.port, "POST", "/tempo", body: #"{"tempo_bpm": 320, "justification": "test"}"#))
        XCTAssertEqual(response.status, 202, response.text)
        let atBeat = try XCTUnwrap((response.json["apply_at_beat"] as? NSNumber)?.int64Value)
        XCTAssertEqual(atBeat % 8, 0, "applies on a downbeat")
        XCTAssertEqual(call(node.port, "GET", "/tempo")?.json["pending_bpm"] as? Int, 320)
        // A second change while one is pending is refused with 409.
        XCTAssertEqual(call(node.port, "POST", "/tempo", body: #"{"tempo_bpm": 310}"#)?.status, 409)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 15) { self.indices(node.beats.received).contains(atBeat + 3) },
            node.process.log)
        let frames = node.beats.received
        let byIndex = Dictionary(
            frames.map { (($0.object["beat_index"] as? NSNumber)!.int64Value, $0) }, uniquingKeysWith: { a, _ in a })
        for (index, frame) in byIndex {
            let bpm = (frame.object["tempo_bpm"] as? NSNumber)?.int64Value
            XCTAssertEqual(bpm, index < atBeat ? 300 : 320, "tempo of beat \(index)")
        }
        assertNoGap(indices(frames))
        // The instants follow the epochs exactly: beat D keeps its old instant,
        // later beats are 60/320 s apart.
        let epoch = try ContractEpoch.load(adminPort: node.port)
        let instantD = epoch.instantNs(atBeat)  // the old epoch places D
        let deadlineD = byIndex[atBeat]?.object["deadline_at"] as? String
        XCTAssertEqual(deadlineD, FrameChecker.rfc3339(ns: instantD + 60_000_000_000 / 320))
        XCTAssertEqual(call(node.port, "GET", "/tempo")?.json["current_bpm"] as? Int, 320)
        // Announced on the control subject.
        XCTAssertTrue(control.wait(for: 1, seconds: 5))
        let announcement = control.received.first?.object ?? [:]
        XCTAssertEqual((announcement["beat_index"] as? NSNumber)?.int64Value, atBeat)
        XCTAssertEqual(announcement["tempo_bpm"] as? Int, 320)
        XCTAssertEqual(announcement["previous_bpm"] as? Int, 300)
    }

    func testRefusalsAreCountedByReason() throws {
        let node = try startNode(bpm: 120, cluster: "refuse")
        defer { node.process.stop() }
        XCTAssertEqual(call(node.port, "POST", "/tempo", body: #"{"tempo_bpm": 700}"#)?.status, 422)
        XCTAssertEqual(call(node.port, "POST", "/tempo", body: #"{"tempo_bpm": 150}"#)?.status, 422)
        XCTAssertEqual(call(node.port, "POST", "/tempo", body: #"{"tempo_bpm": "fast"}"#)?.status, 400)
        XCTAssertEqual(call(node.port, "POST", "/tempo", body: #"{nope"#)?.status, 400)
        let metrics = try XCTUnwrap(call(node.port, "GET", "/metrics")).text
        for reason in ["out_of_range", "delta_too_large", "invalid_field", "malformed_json"] {
            XCTAssertTrue(
                metrics.contains("backbeat_tempo_change_errors_total{reason=\"\(reason)\"} 1"), "\(reason)\n\(metrics)")
        }
    }

    func testControlSubjectRequestReply() throws {
        let node = try startNode(bpm: 120, cluster: "ctl")
        defer { node.process.stop() }
        XCTAssertTrue(node.beats.wait(for: 1, seconds: 10))
        XCTAssertTrue(Harness.waitForRequests(url: node.nats.url, cluster: "ctl"), node.process.log)
        var nc: OpaquePointer?
        XCTAssertEqual(natsConnection_ConnectTo(&nc, node.nats.url), NATS_OK)
        defer { natsConnection_Destroy(nc) }
        func request(_ body: String) -> [String: Any] {
            var reply: OpaquePointer?
            let status = natsConnection_RequestString(&reply, nc, "backbeat.ctl.control", body, 5000)
            guard status == NATS_OK, let reply else { return [:] }
            defer { natsMsg_Destroy(reply) }
            let data = Data(bytes: natsMsg_GetData(reply), count: Int(natsMsg_GetDataLength(reply)))
            return (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
        }
        XCTAssertEqual(request("not json")["status"] as? Int, 400)
        XCTAssertEqual(request(#"{"tempo_bpm": 200}"#)["code"] as? String, "delta_too_large")
        let accepted = request(#"{"tempo_bpm": 125, "justification": "over nats"}"#)
        XCTAssertEqual(accepted["status"] as? Int, 202, "\(accepted)")
        XCTAssertEqual(accepted["tempo_bpm"] as? Int, 125)
        XCTAssertEqual(call(node.port, "GET", "/tempo")?.json["pending_bpm"] as? Int, 125)
    }

    func testAbuseLeavesLiveAnsweringAndTheBeatStreamWhole() throws {
        let node = try startNode(bpm: 600, cluster: "abuse")
        defer { node.process.stop() }
        XCTAssertTrue(node.beats.wait(for: 3, seconds: 10))
        let port = node.port
        // Garbage bytes.
        let garbage = try RawClient(port: port)
        _ = garbage.send(bytes: (0..<512).map { _ in UInt8.random(in: 0...255) })
        XCTAssertEqual(garbage.readResponse()?.status ?? 400, 400)
        // A 64 KiB header.
        let big = try RawClient(port: port)
        _ = big.send("GET /live HTTP/1.1\r\nHost: x\r\nX-Big: " + String(repeating: "a", count: 64 * 1024) + "\r\n\r\n")
        XCTAssertEqual(big.readResponse()?.status, 431)
        // 50 half-sent requests held open.
        var held: [RawClient] = []
        for _ in 0..<50 {
            if let client = try? RawClient(port: port) {
                _ = client.send("GET /tempo HTTP/1.1\r\nHost: x\r\n")
                held.append(client)
            }
        }
        // 200 abrupt disconnects, half of them mid-request.
        for i in 0..<200 {
            guard let client = try? RawClient(port: port) else { continue }
            if i % 2 == 0 { _ = client.send("POST /tempo HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"tempo") }
            client.reset()
        }
        let started = Date()
        let live = call(port, "GET", "/live")
        XCTAssertEqual(live?.status, 200)
        XCTAssertLessThan(Date().timeIntervalSince(started), 2, "/live answers promptly")
        held.forEach { $0.close() }
        let before = node.beats.count
        XCTAssertTrue(node.beats.wait(for: before + 5, seconds: 5), "beats keep coming")
        assertNoGap(indices(node.beats.received))
        let metrics = call(port, "GET", "/metrics")?.text ?? ""
        XCTAssertTrue(metrics.contains("backbeat_hot_path_allocated_bytes_total 0"), metrics)
    }

    func testPromtoolAcceptsLiveMetrics() throws {
        let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"].first {
            FileManager.default.isExecutableFile(atPath: $0)
        }
        let tool = try XCTUnwrap(promtool, "promtool (Debian package prometheus) must be installed")
        let node = try startNode(bpm: 600, cluster: "prom")
        defer { node.process.stop() }
        XCTAssertTrue(node.beats.wait(for: 5, seconds: 10))
        _ = call(node.port, "POST", "/tempo", body: #"{"tempo_bpm": 9000}"#)
        let response = try XCTUnwrap(call(node.port, "GET", "/metrics"))
        XCTAssertEqual(response.status, 200)
        XCTAssertTrue(response.contentType?.hasPrefix("text/plain; version=0.0.4") ?? false)
        let hotPath = response.text.split(separator: "\n").filter { $0.hasPrefix("backbeat_hot_path") }
        XCTAssertEqual(hotPath, ["backbeat_hot_path_allocated_bytes_total 0"], node.process.log)
        for name in [
            "backbeat_beat_publish_duration_seconds_bucket", "backbeat_pulse_jitter_seconds_bucket",
            "backbeat_beat_delivery_latency_seconds_bucket", "backbeat_timer_drift_ratio", "backbeat_is_leader 1.0",
            "backbeat_beats_total", "backbeat_beats_missed_total", "backbeat_tempo_change_errors_total",
            "backbeat_leadership_changes_total", "backbeat_degradation_mode 0.0",
            // A single node is a one-voter cluster: one voter in force, one configured.
            "\nbackbeat_raft_voters 1.0", "\nbackbeat_raft_voters_configured 1.0",
            #"backbeat_nats_connected{connection="beat"} 1.0"#, #"backbeat_nats_connected{connection="requests"} 1.0"#,
            #"backbeat_nats_reconnects_total{connection="requests"} 0"#,
            #"backbeat_nats_slow_consumer_total{connection="beat"} 0"#, "backbeat_tempo_bpm 600.0",
            "le=\"1e-06\"", "le=\"1.0\"",
        ] {
            XCTAssertTrue(response.text.contains(name), "metrics mention \(name)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = ["check", "metrics"]
        let input = Pipe()
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        try process.run()
        input.fileHandleForWriting.write(Data(response.body))
        try input.fileHandleForWriting.close()
        process.waitUntilExit()
        let said = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(process.terminationStatus, 0, said)
    }
}
