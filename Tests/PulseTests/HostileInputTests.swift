// Untrusted input on the NATS subjects (requirements §10), against a real
// `pulse` process and a real nats-server: the issue's payloads and a set of
// hostile frames on the beat subject, hostile requests on the control
// subject. The node stays up, keeps publishing every beat without a gap, and
// counts each refusal by surface and reason on /metrics. And /health tells
// the truth: a node that cannot publish reports it within two periods.
import CNats
import Foundation
import Glibc
import PulseCore
import XCTest

final class HostileInputTests: XCTestCase {
    private static let cluster = "hostile"
    private static let nodeId = "node-h0st"
    private static let token = "s3cret-token"
    /// 300 bpm: a 200 ms period.
    private static let bpm = 300
    private static let periodMs = 200

    private struct Node {
        let nats: NatsServer
        let process: PulseProcess
        let port: Int
        let beats: Subscriber
    }

    private func startNode(extra: [String] = []) throws -> Node {
        let nats = try NatsServer()
        let dir = Harness.tempDir(Self.cluster)
        let port = Harness.freePort()
        let beats = try Subscriber(url: nats.url, subject: "backbeat.\(Self.cluster).beat")
        let process = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "\(Self.bpm)", "-max-bpm", "600", "-cluster", Self.cluster, "-node-id",
                Self.nodeId, "-nats", nats.url, "-data-dir", dir + "/data", "-admin-port", "\(port)",
            ] + extra, logPath: dir + "/node.log")
        XCTAssertTrue(Harness.waitUntil(seconds: 10) { (try? RawClient(port: port)) != nil }, process.log)
        XCTAssertTrue(beats.wait(for: 3, seconds: 10), process.log)
        return Node(nats: nats, process: process, port: port, beats: beats)
    }

    private func get(_ port: Int, _ path: String) -> RawResponse? {
        guard let client = try? RawClient(port: port) else { return nil }
        return client.request(httpRequest("GET", path))
    }

    /// `name{...labels...} value` from /metrics, 0 when absent.
    private func metric(_ text: String, _ name: String, _ labels: [String]) -> Int {
        for line in text.split(separator: "\n") where line.hasPrefix(name + "{") {
            guard labels.allSatisfy({ line.contains($0) }), let value = line.split(separator: " ").last else {
                continue
            }
            return Int(Double(value) ?? -1)
        }
        return 0
    }

    /// Reasons counted for `surface` on /metrics, with their values.
    private func rejections(_ text: String, surface: String) -> [String: Int] {
        var out: [String: Int] = [:]
        for line in text.split(separator: "\n")
        where line.hasPrefix("backbeat_rejected_input_total{") && line.contains("surface=\"\(surface)\"") {
            guard let start = line.range(of: "reason=\"")?.upperBound,
                let end = line[start...].firstIndex(of: "\""), let value = line.split(separator: " ").last
            else { continue }
            out[String(line[start..<end])] = Int(Double(value) ?? -1)
        }
        return out
    }

    /// This node's own frames (not the forged ones, which say phase "forged"), decoded, in arrival order.
    private func ownFrames(_ node: Node) -> [DecodedBeatFrame] {
        node.beats.received.compactMap { try? BeatFrameDecoder.decode([UInt8]($0.raw)) }.filter {
            $0.clusterId == Self.cluster && $0.hlcSuffix == String(Self.nodeId.suffix(4)) && $0.phase != "forged"
                && $0.term == 1
        }
    }

    private func assertConsecutive(_ frames: [DecodedBeatFrame], file: StaticString = #filePath, line: UInt = #line) {
        let indices = frames.map(\.beatIndex)
        for (a, b) in zip(indices, indices.dropFirst()) where b != a + 1 {
            XCTFail("beat \(b) follows \(a): gap or repeat in \(indices)", file: file, line: line)
        }
    }

    /// A full frame of this cluster as text, with any field replaced by raw JSON.
    private func forged(
        index: String, from last: DecodedBeatFrame, cluster: String = cluster, suffix: String = "h0st",
        term: String = "1"
    ) -> String {
        let deadline = iso(last.deadlineUnixMs)
        return """
            {"type":"backbeat.beatframe.v1","cluster_id":"\(cluster)","beat_index":\(index),"downbeat":false,\
            "phase":"forged","hlc":"\(String(last.hlc.wallMs, radix: 16)):0000:\(suffix)","deadline_at":"\(deadline)",\
            "tempo_bpm":\(Self.bpm),"window_id":"\(last.windowId)","term":\(term)}
            """
    }

    private func iso(_ ms: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
    }

    func testHostileBeatFramesAreRefusedCountedAndTheBeatGoesOn() throws {
        let node = try startNode()
        defer { node.process.stop() }
        let publisher = try RawNats(url: node.nats.url)
        let subject = "backbeat.\(Self.cluster).beat"
        let last = try XCTUnwrap(ownFrames(node).last, node.process.log)
        // The current beat now, from the last frame's arrival (200 ms periods).
        let lastReceived = try XCTUnwrap(node.beats.received.last?.receivedNs)
        let current = { last.beatIndex + (wallNowNs() - lastReceived) / Int64(Self.periodMs * 1_000_000) }
        let before = ownFrames(node).count

        let payloads: [(String, String)] = [
            (#"{"beat_index":9223372036854775807}"#, "missing_field"),
            (#"{"beat_index":1000000}"#, "missing_field"),
            (forged(index: "9223372036854775807", from: last), "index_ahead"),
            (forged(index: "1000000", from: last), "index_ahead"),
            (forged(index: "\(current() + 5)", from: last), "index_ahead"),
            (forged(index: "9223372036854775808", from: last), "bad_beat_index"),
            (forged(index: "-1", from: last), "bad_beat_index"),
            (forged(index: "\(current()).5", from: last), "bad_beat_index"),
            (forged(index: "1e30", from: last), "bad_beat_index"),
            (forged(index: "\"\(current())\"", from: last), "bad_beat_index"),
            (forged(index: "\(current() + 1)", from: last, cluster: "someone-else"), "wrong_cluster"),
            (forged(index: "\(current() + 1)", from: last, term: "4611686018427387904"), "term_ahead"),
            (forged(index: "\(current() + 1)", from: last, suffix: "zzzz"), "unknown_publisher"),
            (
                forged(index: "\(current() + 1)", from: last).replacingOccurrences(of: "beatframe.v1", with: "tempo"),
                "wrong_type"
            ),
            ("hello, beat", "malformed_json"),
            ("", "empty"),
            ("[1,2,3]", "not_an_object"),
            ("{\"x\":" + String(repeating: "[", count: 200) + String(repeating: "]", count: 200) + "}", "too_deep"),
            ("{\"x\":\"" + String(repeating: "x", count: 100_000) + "\"}", "too_large"),
        ]
        for (payload, _) in payloads {
            XCTAssertTrue(publisher.publish(subject, Array(payload.utf8)))
        }
        publisher.flush()
        // Keep watching for a while: the node must not skip the beats the forged frames claimed.
        XCTAssertTrue(Harness.waitUntil(seconds: 10) { self.ownFrames(node).count >= before + 12 }, node.process.log)
        XCTAssertTrue(node.process.process.isRunning, node.process.log)

        var expected: [String: Int] = [:]
        for (_, reason) in payloads { expected[reason, default: 0] += 1 }
        var counted: [String: Int] = [:]
        Harness.waitUntil(seconds: 3) {
            counted = self.rejections(self.get(node.port, "/metrics")?.text ?? "", surface: "beat_subject")
            return counted == expected
        }
        // Exactly these: the node's own echoes are never refused.
        XCTAssertEqual(counted, expected, node.process.log)
        assertConsecutive(ownFrames(node))
        XCTAssertEqual(get(node.port, "/health")?.status, 200, get(node.port, "/health")?.text ?? "")
    }

    func testControlSubjectRequiresTheTokenAndRefusesHostileRequests() throws {
        let node = try startNode(extra: ["-admin-token", Self.token])
        defer { node.process.stop() }
        XCTAssertTrue(Harness.waitForRequests(url: node.nats.url, cluster: Self.cluster), node.process.log)
        let nats = try RawNats(url: node.nats.url)
        let subject = "backbeat.\(Self.cluster).control"
        func ask(_ body: String) -> [String: Any] {
            guard let answer = nats.request(subject, Array(body.utf8)) else { return [:] }
            return (try? JSONSerialization.jsonObject(with: Data(answer)) as? [String: Any]) ?? [:]
        }
        let unauthorized = [#"{"tempo_bpm":310}"#, #"{"tempo_bpm":310,"token":"wrong"}"#, "garbage", #"{"token":7}"#]
        for body in unauthorized {
            let answer = ask(body)
            XCTAssertEqual(answer["status"] as? Int, 401, "\(body): \(answer)")
            XCTAssertEqual(answer["code"] as? String, "unauthorized", "\(body): \(answer)")
        }
        let huge = ask(
            #"{"token":"\#(Self.token)","tempo_bpm":310,"pad":""# + String(repeating: "x", count: 10_000) + "\"}")
        XCTAssertEqual(huge["status"] as? Int, 413, "\(huge)")
        let malformed = ask(#"{"token":"\#(Self.token)","tempo_bpm":"fast"}"#)
        XCTAssertEqual(malformed["status"] as? Int, 400, "\(malformed)")
        XCTAssertEqual(malformed["code"] as? String, "invalid_field", "\(malformed)")
        // An answer must not land on one of our own subjects (or anywhere absurd).
        XCTAssertTrue(
            nats.publish(
                subject, Array(#"{"token":"\#(Self.token)","tempo_bpm":310}"#.utf8),
                reply: "backbeat.\(Self.cluster).beat"))
        XCTAssertTrue(
            nats.publish(subject, Array(#"{"tempo_bpm":310}"#.utf8), reply: String(repeating: "r", count: 300)))
        nats.flush()
        // With the token, the change is accepted.
        let accepted = ask(#"{"token":"\#(Self.token)","tempo_bpm":310,"justification":"hostile test"}"#)
        XCTAssertEqual(accepted["status"] as? Int, 202, "\(accepted)")

        var metrics = ""
        let expected = ["unauthorized": 4, "too_large": 1, "invalid_field": 1, "bad_reply_subject": 2]
        Harness.waitUntil(seconds: 3) {
            metrics = self.get(node.port, "/metrics")?.text ?? ""
            return self.rejections(metrics, surface: "control_subject") == expected
        }
        XCTAssertEqual(rejections(metrics, surface: "control_subject"), expected, node.process.log)
        XCTAssertEqual(metric(metrics, "backbeat_tempo_change_errors_total", [#"reason="unauthorized""#]), 4)
        XCTAssertEqual(metric(metrics, "backbeat_tempo_change_errors_total", [#"reason="body_too_large""#]), 1)
        // Nothing but frames on the beat subject (no answer was sent there), and no gap.
        XCTAssertFalse(node.beats.received.contains { $0.text.contains("\"status\"") })
        XCTAssertTrue(node.beats.wait(for: node.beats.count + 3, seconds: 5))
        XCTAssertTrue(node.process.process.isRunning, node.process.log)
        assertConsecutive(ownFrames(node))
    }

    /// Forged echoes that pass every check (the node's own HLC suffix, its
    /// term, the next index) arrive ahead of each beat: the one publisher
    /// must not take them for its own frames and skip (adversarial review
    /// of issue 9: ten such frames a second silenced a node completely).
    func testForgedNextIndexEchoesDoNotSilenceThePublisher() throws {
        let node = try startNode()
        defer { node.process.stop() }
        let publisher = try RawNats(url: node.nats.url)
        let subject = "backbeat.\(Self.cluster).beat"
        let last = try XCTUnwrap(ownFrames(node).last, node.process.log)
        let lastReceived = try XCTUnwrap(node.beats.received.last?.receivedNs)
        let periodNs = Int64(Self.periodMs * 1_000_000)
        let before = ownFrames(node).count
        let deadline = Date().addingTimeInterval(3)
        while Date() < deadline {  // 20 forgeries a second for 3 s (15 beats)
            let next = last.beatIndex + (wallNowNs() - lastReceived) / periodNs + 1
            _ = publisher.publish(subject, Array(forged(index: "\(next)", from: last, suffix: "h0st").utf8))
            publisher.flush()
            usleep(50_000)
        }
        XCTAssertTrue(node.beats.wait(for: node.beats.count + 2, seconds: 3))
        let frames = ownFrames(node)
        XCTAssertGreaterThanOrEqual(frames.count - before, 14, node.process.log)
        assertConsecutive(frames)
    }

    func testHostileHttpRequestsAreRefusedAndCounted() throws {
        let node = try startNode(extra: ["-admin-token", Self.token])
        defer { node.process.stop() }
        func status(_ bytes: [UInt8]) -> Int? {
            guard let client = try? RawClient(port: node.port), client.send(bytes: bytes) else { return nil }
            return client.readResponse()?.status
        }
        XCTAssertEqual(status(Array("GARBAGE\r\n\r\n".utf8)), 400)
        XCTAssertEqual(
            status(Array("GET /live HTTP/1.1\r\nX: \(String(repeating: "a", count: 9000))\r\n\r\n".utf8)), 431)
        XCTAssertEqual(
            status(Array("POST /tempo HTTP/1.1\r\nContent-Length: 9999\r\n\r\n".utf8)), 413)
        XCTAssertEqual(
            status(Array("POST /tempo HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".utf8)),
            401)
        var metrics = ""
        let expected = ["bad_request": 1, "headers_too_large": 1, "body_too_large": 1, "unauthorized": 1]
        Harness.waitUntil(seconds: 3) {
            metrics = self.get(node.port, "/metrics")?.text ?? ""
            return self.rejections(metrics, surface: "http") == expected
        }
        XCTAssertEqual(rejections(metrics, surface: "http"), expected, node.process.log)
        XCTAssertTrue(node.beats.wait(for: node.beats.count + 3, seconds: 5))
        assertConsecutive(ownFrames(node))
    }

    func testHealthFailsWithinTwoPeriodsWhenTheNodeCannotPublish() throws {
        let node = try startNode()
        defer { node.process.stop() }
        let healthy = try XCTUnwrap(get(node.port, "/health"))
        XCTAssertEqual(healthy.status, 200, healthy.text)
        let components = healthy.json["components"] as? [String: [String: String]]
        XCTAssertEqual(components?["publishing"]?["status"], "ok", healthy.text)

        node.nats.stop()
        let stoppedAt = Date()
        var failing: RawResponse?
        Harness.waitUntil(seconds: 5) {
            guard let response = self.get(node.port, "/health"), response.status == 503,
                (response.json["components"] as? [String: [String: String]])?["publishing"]?["status"] == "failing"
            else { return false }
            failing = response
            return true
        }
        let elapsedMs = Date().timeIntervalSince(stoppedAt) * 1000
        let response = try XCTUnwrap(failing, "publishing never reported failing: \(node.process.log)")
        // Two periods after the last publish, plus the margin of a period and polling.
        XCTAssertLessThan(elapsedMs, Double(4 * Self.periodMs) + 300, response.text)
        let detail = (response.json["components"] as? [String: [String: String]])?["publishing"]?["detail"] ?? ""
        XCTAssertTrue(detail.contains("published nothing"), detail)
        let ready = try XCTUnwrap(get(node.port, "/ready"))
        XCTAssertEqual(ready.status, 503, ready.text)
        XCTAssertEqual(ready.json["ready"] as? Bool, false, ready.text)

        try node.nats.start()
        let recovered = Harness.waitUntil(seconds: 15) {
            self.get(node.port, "/health")?.status == 200 && self.get(node.port, "/ready")?.status == 200
        }
        XCTAssertTrue(recovered, (get(node.port, "/health")?.text ?? "") + node.process.log)
        XCTAssertTrue(node.process.process.isRunning)
    }
}

/// Wall-clock ns, as the subscriber stamps frames.
private func wallNowNs() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// Any NATS client: publishes raw bytes (optionally with a reply subject) and makes requests.
final class RawNats {
    private var connection: OpaquePointer?

    init(url: String) throws {
        let status = natsConnection_ConnectTo(&connection, url)
        guard status == NATS_OK else { throw NSError(domain: "connect: \(status)", code: 1) }
    }

    func publish(_ subject: String, _ bytes: [UInt8], reply: String? = nil) -> Bool {
        bytes.withUnsafeBytes { raw in
            if let reply {
                return natsConnection_PublishRequest(connection, subject, reply, raw.baseAddress, Int32(raw.count))
                    == NATS_OK
            }
            return natsConnection_Publish(connection, subject, raw.baseAddress, Int32(raw.count)) == NATS_OK
        }
    }

    /// The reply's bytes, or nil after 3 s.
    func request(_ subject: String, _ bytes: [UInt8]) -> [UInt8]? {
        var message: OpaquePointer?
        let status = bytes.withUnsafeBytes { raw in
            natsConnection_Request(&message, connection, subject, raw.baseAddress, Int32(raw.count), 3000)
        }
        guard status == NATS_OK, let message else { return nil }
        defer { natsMsg_Destroy(message) }
        let data = natsMsg_GetData(message)
        let count = Int(natsMsg_GetDataLength(message))
        return data.map { Array(UnsafeRawBufferPointer(start: $0, count: count)) } ?? []
    }

    func flush() { natsConnection_FlushTimeout(connection, 2000) }

    deinit { natsConnection_Destroy(connection) }
}
