// The live view's event streams against a real `pulse` process and a real
// nats-server: 50 open streams (half of them never read) cost the beat
// nothing — no gap on the beat subject, no missed beat, `/live` answering —
// and streams beyond the limit (64) are refused with 503. Bounded: ~15 s.
import Foundation
import Glibc
import PulseCore
import XCTest

final class LiveViewProcessTests: XCTestCase {
    private static let cluster = "liveview"

    func testFiftyStreamsLeaveNoGapOnTheSubjectAndLiveAnswers() throws {
        let nats = try NatsServer()
        let dir = Harness.tempDir(Self.cluster)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = Harness.freePort()
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.\(Self.cluster).beat")
        // 600 bpm: a 100 ms period, so the window below holds ~60 beats.
        let node = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", Self.cluster, "-nats", nats.url,
                "-data-dir", dir + "/data", "-admin-port", "\(port)",
            ], logPath: dir + "/node.log")
        defer { node.stop() }
        XCTAssertTrue(subscriber.wait(for: 3, seconds: 15), node.log)

        // 25 streams read by a thread each, 25 opened and never read (small receive buffers).
        let readers = (0..<25).map { _ in StreamReader(port: port) }
        var idle: [EventStreamClient] = []
        for _ in 0..<25 {
            let client = try EventStreamClient(port: port, receiveBufferBytes: 2048)
            XCTAssertEqual(client.open(), 200)
            idle.append(client)
        }
        XCTAssertTrue(Harness.waitUntil(seconds: 5) { readers.allSatisfy { $0.opened } }, "every reader streams")
        XCTAssertEqual(readers.filter { $0.status == 200 }.count, 25)

        // Beyond the limit of 64 open streams: 503 with a machine code and Retry-After.
        var extra: [EventStreamClient] = []
        for _ in 0..<14 {
            let client = try EventStreamClient(port: port)
            XCTAssertEqual(client.open(), 200)
            extra.append(client)
        }
        for _ in 0..<2 {
            let refused = try EventStreamClient(port: port)
            XCTAssertEqual(refused.open(), 503)
            XCTAssertEqual(refused.headers["retry-after"], "5")
            XCTAssertTrue(refused.readToClose().contains("too_many_event_streams"))
        }
        extra.removeAll()  // back to 50 streams for the measured window

        let firstCount = subscriber.count
        var worstLiveMs = 0.0
        var liveFailures = 0
        let windowStart = Date()
        while Date().timeIntervalSince(windowStart) < 6 {
            let start = Date()
            if let client = try? RawClient(port: port, timeoutMs: 2000),
                client.request(httpRequest("GET", "/live"))?.status == 200
            {
                worstLiveMs = max(worstLiveMs, Date().timeIntervalSince(start) * 1000)
            } else {
                liveFailures += 1
            }
            usleep(100_000)
        }
        let frames = subscriber.received.dropFirst(firstCount).compactMap {
            try? BeatFrameDecoder.decode([UInt8]($0.raw))
        }
        let indices = frames.map(\.beatIndex)
        XCTAssertGreaterThanOrEqual(indices.count, 50, "about 60 beats in 6 s at 600 bpm")
        if let first = indices.first {
            XCTAssertEqual(indices, Array(first..<(first + Int64(indices.count))), "no gap, no repeat on the subject")
        }
        XCTAssertEqual(liveFailures, 0, "/live answered every time")
        XCTAssertLessThan(worstLiveMs, 500, "/live answered promptly (worst \(worstLiveMs) ms)")
        print("50 streams: \(indices.count) consecutive frames, /live worst \(String(format: "%.1f", worstLiveMs)) ms")

        // The readers saw those beats as events, in order.
        let last = indices.last ?? 0
        for reader in readers {
            let seen = reader.beats
            XCTAssertGreaterThanOrEqual(seen.filter { $0 >= indices.first ?? 0 && $0 <= last }.count, indices.count - 2)
            XCTAssertEqual(seen, seen.sorted(), "beat events in order")
        }

        let metrics = try XCTUnwrap(RawClient(port: port).request(httpRequest("GET", "/metrics")))
        let text = metrics.text
        XCTAssertEqual(
            Self.metric(
                text, "backbeat_rejected_input_total", [#"surface="http""#, #"reason="too_many_event_streams""#]),
            2, "both refusals counted")
        XCTAssertEqual(Self.metric(text, "backbeat_beats_missed_total"), 0, "no beat missed")
        XCTAssertEqual(
            Self.metric(text, "backbeat_hot_path_allocated_bytes_total"), 0, "the beat path allocated nothing")
        readers.forEach { $0.stop() }
        _ = idle
    }
}

extension LiveViewProcessTests {
    /// The value of `name` (with every one of `labels`) on /metrics, nil when absent.
    static func metric(_ text: String, _ name: String, _ labels: [String] = []) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") || line.hasPrefix(name + "{") {
            guard labels.allSatisfy({ line.contains($0) }), let value = line.split(separator: " ").last else {
                continue
            }
            return Double(value)
        }
        return nil
    }
}

/// A stream read by its own thread; remembers the beat indices it saw.
private final class StreamReader: @unchecked Sendable {
    private let lock = NSLock()
    private var seen: [Int] = []
    private var openedStatus = 0
    private var stopped = false

    init(port: Int) {
        Thread { [self] in
            guard let client = try? EventStreamClient(port: port, timeoutMs: 2000) else { return set(status: -1) }
            set(status: client.open())
            while !isStopped, let event = client.next(named: "beat") {
                let index = event.json["beat_index"] as? Int ?? -1
                lock.lock()
                seen.append(index)
                lock.unlock()
            }
        }.start()
    }

    private func set(status: Int) {
        lock.lock()
        openedStatus = status
        lock.unlock()
    }

    var status: Int {
        lock.lock()
        defer { lock.unlock() }
        return openedStatus
    }
    var opened: Bool { status != 0 }
    var beats: [Int] {
        lock.lock()
        defer { lock.unlock() }
        return seen
    }
    private var isStopped: Bool {
        lock.lock()
        defer { lock.unlock() }
        return stopped
    }
    func stop() {
        lock.lock()
        stopped = true
        lock.unlock()
    }
}
