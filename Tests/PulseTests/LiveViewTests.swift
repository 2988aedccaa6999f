// The live view in process, over real HTTP on loopback: the page is the
// checked-in index.html and loads nothing from elsewhere; `GET /events`
// streams the state first, then beats and state changes; streams over the
// limit get 503; a reader that stops reading is dropped (buffer full, or
// stalled) while the others get every event; the fan-out waits when a beat is due.
import CLoop
import Foundation
import Glibc
import XCTest

@testable import Pulse

/// A scripted `LiveSource` (loop thread).
final class FakeLiveSource: LiveSource {
    var signature = LiveSignature(term: 1, role: 1, natsConnected: true, started: true, bpm: 120)
    var state = LiveState(
        node_id: "pulse-a", cluster_id: "live", role: "leader", term: 1, leader: "pulse-a", degraded: false,
        nats_connected: true, nats_server: "nats://127.0.0.1:4222", started: true, bar: 4, phases: ["plan", "work"],
        tempo_bpm: 120, min_bpm: 4, max_bpm: 600, pending: nil, peers: [], now_ns: 0)
    var untilBeat: Int64?
    func liveSignature() -> LiveSignature { signature }
    func liveState() -> LiveState { state }
    func nanosecondsToNextBeat() -> Int64? { untilBeat }

    static func beat(_ index: Int64) -> LiveBeat {
        LiveBeat(
            beat_index: index, downbeat: index % 4 == 0, phase: index % 4 < 2 ? "plan" : "work", tempo_bpm: 120,
            term: 1, from: "ab12", degraded: false, instant_ns: 1_000_000_000 * index, received_ns: 0,
            latency_ns: 250_000, jitter_ns: 12_000)
    }
}

/// An admin server with a live source, its loop turned by the test thread.
final class LiveFixture {
    let loop: EventLoop
    let backend = FakeAdminBackend()
    let source = FakeLiveSource()
    let rejected = RejectedInput()
    let server: AdminServer
    var events: AdminEvents { server.events! }
    var port: Int { server.boundPort }

    init(limits: AdminLimits = AdminLimits(), authToken: String? = nil) throws {
        loop = try EventLoop(maxSlots: 512)
        loop.bindToCurrentThread()
        server = AdminServer(
            loop: loop, backend: backend, port: 0, authToken: authToken, limits: limits, rejected: rejected,
            live: source)
        try server.start()
    }

    deinit { server.stop() }

    @discardableResult
    func turn(seconds: Double = 10, until condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            loop.turn(timeoutNs: 2_000_000)
        }
        return condition()
    }
}

/// A blocking Server-Sent Events client on a raw socket (receive timeout bounded).
final class EventStreamClient {
    struct Event {
        var name: String
        var data: String
        var json: [String: Any] {
            (try? JSONSerialization.jsonObject(with: Data(data.utf8)) as? [String: Any]) ?? [:]
        }
    }

    let fd: Int32
    private var buffer: [UInt8] = []
    private(set) var status = 0
    private(set) var headers: [String: String] = [:]

    /// `receiveBufferBytes`: a small SO_RCVBUF, set before connecting (a reader that will stall).
    init(port: Int, receiveBufferBytes: Int32? = nil, timeoutMs: Int = 5000) throws {
        fd = try Harness.connectLoopback(port: port, timeoutMs: timeoutMs, receiveBufferBytes: receiveBufferBytes)
    }

    deinit { Glibc.close(fd) }

    /// Sends `GET path` and reads the response head; the status (0 on failure).
    @discardableResult
    func open(_ path: String = "/events") -> Int {
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".utf8)
        let sent = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard sent == request.count, let end = readUntil([13, 10, 13, 10]) else { return 0 }
        let head = String(decoding: buffer[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        buffer.removeFirst(end + 4)
        let statusLine = head.first?.split(separator: " ") ?? []
        status = statusLine.count >= 2 ? Int(statusLine[1]) ?? 0 : 0
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(
                in: .whitespaces)
        }
        return status
    }

    /// The rest of the body until the server closes (for refusals).
    func readToClose() -> String {
        while fill() {}
        defer { buffer.removeAll() }
        return String(decoding: buffer, as: UTF8.self)
    }

    /// The next event (comments and `retry:` skipped); nil on close or timeout.
    func next() -> Event? {
        while let end = readUntil([10, 10]) {
            let block = String(decoding: buffer[..<end], as: UTF8.self)
            buffer.removeFirst(end + 2)
            var name = "message"
            var data: [String] = []
            for line in block.split(separator: "\n", omittingEmptySubsequences: false) {
                if line.hasPrefix("event: ") { name = String(line.dropFirst(7)) }
                if line.hasPrefix("data: ") { data.append(String(line.dropFirst(6))) }
            }
            if !data.isEmpty { return Event(name: name, data: data.joined(separator: "\n")) }
        }
        return nil
    }

    /// The next event named `name`, skipping others; nil on close or timeout.
    func next(named name: String) -> Event? {
        while let event = next() {
            if event.name == name { return event }
        }
        return nil
    }

    /// True when the server closed the stream (EOF or reset) within the timeout.
    func waitForClose() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { continue }
            return n == 0 || errno == ECONNRESET
        }
    }

    private func readUntil(_ separator: [UInt8]) -> Int? {
        var searched = 0
        while true {
            if buffer.count >= separator.count {
                var i = max(0, searched - separator.count)
                while i + separator.count <= buffer.count {
                    if buffer[i] == separator[0] && Array(buffer[i..<(i + separator.count)]) == separator { return i }
                    i += 1
                }
                searched = buffer.count
            }
            if !fill() { return nil }
        }
    }

    private func fill() -> Bool {
        Harness.receive(fd, appendingTo: &buffer)
    }
}

final class LiveViewTests: XCTestCase {
    func testPageIsTheCheckedInHTMLAndLoadsNothingFromElsewhere() throws {
        let fixture = try AdminFixture()
        let response = try XCTUnwrap(fixture.exchange(httpRequest("GET", "/")))
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(response.contentType, "text/html; charset=utf-8")
        let policy = try XCTUnwrap(response.headers["content-security-policy"])
        XCTAssertTrue(policy.hasPrefix("default-src 'none'"), policy)
        XCTAssertTrue(policy.contains("connect-src 'self'"), policy)
        let page = response.text
        XCTAssertTrue(page.contains("new EventSource(\"/events\")"))
        XCTAssertFalse(page.contains("://"), "no absolute URL: nothing is loaded from elsewhere")
        XCTAssertFalse(page.contains("<script src") || page.contains("<link"), "no external script or stylesheet")

        let html = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent(
            "../../web/index.html")
        let source = try String(contentsOf: html, encoding: .utf8)
        XCTAssertEqual(
            page + "\n", source, "Web/LivePageHTML.swift is stale: run scripts/embed-web.sh after editing index.html")

        let head = try XCTUnwrap(fixture.exchange(httpRequest("HEAD", "/"), head: true))
        XCTAssertEqual(head.status, 200)
        XCTAssertEqual(head.headers["content-length"], "\(page.utf8.count)")
    }

    func testEventsWithoutALiveSourceAre404() throws {
        let fixture = try AdminFixture()
        XCTAssertEqual(fixture.exchange(httpRequest("GET", "/events"))?.status, 404)
        XCTAssertEqual(fixture.exchange(httpRequest("POST", "/events", body: "{}"))?.status, 405)
    }

    func testStreamSendsStateFirstThenBeatsAndStateChanges() throws {
        let fixture = try LiveFixture(authToken: "t0ken")
        let port = fixture.port
        let box = ResultBox<(Int, [String: String], [EventStreamClient.Event])>()
        Thread {
            guard let client = try? EventStreamClient(port: port) else { return box.set((0, [:], [])) }
            let status = client.open()
            box.set((status, client.headers, (0..<3).compactMap { _ in client.next() }))
        }.start()
        var step = 0
        fixture.turn {
            if step == 0, fixture.events.streamCount == 1 {
                fixture.events.beatSeen(FakeLiveSource.beat(8))
                step = 1
            } else if step == 1, fixture.events.stats.beatEvents == 1 {
                fixture.source.signature.pendingAtBeat = 16
                fixture.source.state.pending = .init(at_beat: 16, at_ns: 16_000_000_000, bpm: 132)
                step = 2
            }
            return box.isSet
        }
        let (status, headers, events) = try XCTUnwrap(box.get())
        XCTAssertEqual(status, 200)
        XCTAssertEqual(headers["content-type"], "text/event-stream; charset=utf-8")
        XCTAssertEqual(events.map(\.name), ["state", "beat", "state"])
        guard events.count == 3 else { return }
        XCTAssertEqual(events[0].json["tempo_bpm"] as? Int, 120)
        XCTAssertEqual(events[0].json["bar"] as? Int, 4)
        XCTAssertEqual(events[0].json["auth_required"] as? Bool, true, "the page asks for the token")
        XCTAssertTrue(events[0].json["pending"] is NSNull, "no pending change: null")
        XCTAssertEqual(events[1].json["beat_index"] as? Int, 8)
        XCTAssertEqual(events[1].json["downbeat"] as? Bool, true)
        XCTAssertEqual(events[1].json["phase"] as? String, "plan")
        XCTAssertEqual(events[1].json["latency_ns"] as? Int, 250_000)
        XCTAssertEqual((events[2].json["pending"] as? [String: Any])?["bpm"] as? Int, 132)
        XCTAssertEqual(fixture.events.stats.stateEvents, 2, "one state on open, one on the change")
    }

    func testStreamsOverTheLimitAre503AndAClosedStreamFreesItsPlace() throws {
        var limits = AdminLimits()
        limits.maxEventStreams = 3
        let fixture = try LiveFixture(limits: limits)
        let port = fixture.port
        let box = ResultBox<[String]>()
        let release = ResultBox<Bool>()
        Thread {
            var log: [String] = []
            var streams = (0..<3).compactMap { _ in try? EventStreamClient(port: port) }
            log += streams.map { "\($0.open())" }
            let extra = try? EventStreamClient(port: port)
            log.append("\(extra?.open() ?? 0) \(extra?.headers["retry-after"] ?? "-")")
            log.append(extra?.readToClose() ?? "")
            streams.removeLast()  // closes one stream
            _ = Harness.waitUntil(seconds: 5) { release.isSet }
            let again = try? EventStreamClient(port: port)
            log.append("\(again?.open() ?? 0)")
            box.set(log)
        }.start()
        fixture.turn {
            if !release.isSet, fixture.events.stats.refused == 1, fixture.events.streamCount == 2 { release.set(true) }
            return box.isSet
        }
        let log = try XCTUnwrap(box.get())
        XCTAssertEqual(Array(log.prefix(4)), ["200", "200", "200", "503 5"])
        XCTAssertTrue(log.count > 4 && log[4].contains("\"code\":\"too_many_event_streams\""), "\(log)")
        XCTAssertEqual(log.last, "200", "a closed stream frees its place")
        XCTAssertEqual(fixture.rejected.count(.http, reason: "too_many_event_streams"), 1)
    }

    func testAReaderThatStopsIsDroppedAndTheOthersGetEveryBeat() throws {
        var limits = AdminLimits()
        limits.eventStreamBufferBytes = 8 * 1024
        limits.eventStreamSocketBufferBytes = 2 * 1024
        let fixture = try LiveFixture(limits: limits)
        let port = fixture.port
        let beats = 400
        let slowOpened = ResultBox<Bool>()
        let slowClosed = ResultBox<Bool>()
        let fast = ResultBox<[Int]>()
        let slowClient = ResultBox<EventStreamClient>()
        let fastClient = ResultBox<EventStreamClient>()
        Thread {
            // Reads the head, then nothing until the end: the server must drop it.
            guard let client = try? EventStreamClient(port: port, receiveBufferBytes: 2048, timeoutMs: 20_000),
                client.open() == 200
            else { return slowOpened.set(false) }
            slowClient.set(client)
            slowOpened.set(true)
        }.start()
        Thread {
            guard let client = try? EventStreamClient(port: port), client.open() == 200 else { return fast.set([]) }
            fastClient.set(client)  // stays open until the test ends
            var seen: [Int] = []
            while seen.last != beats - 1, let event = client.next(named: "beat") {
                seen.append(event.json["beat_index"] as? Int ?? -1)
            }
            fast.set(seen)
        }.start()
        XCTAssertTrue(fixture.turn { slowOpened.isSet && fixture.events.streamCount == 2 })
        XCTAssertEqual(slowOpened.get(), true)
        var worstTurnNs: Int64 = 0
        for index in 0..<beats {
            fixture.events.beatSeen(FakeLiveSource.beat(Int64(index)))
            let start = cloop_monotonic_ns()
            fixture.loop.turn(timeoutNs: 0)
            worstTurnNs = max(worstTurnNs, cloop_monotonic_ns() - start)
            if index % 20 == 0 { fixture.turn(seconds: 0.05) { false } }  // let the fast reader keep up
        }
        XCTAssertTrue(fixture.turn { fast.isSet })
        XCTAssertEqual(fast.get() ?? [], Array(0..<beats), "the reading stream got every beat, in order")
        XCTAssertEqual(fixture.events.stats.droppedSlow, 1, "the stream that stopped reading was dropped")
        XCTAssertEqual(fixture.events.streamCount, 1)
        XCTAssertEqual(fixture.rejected.count(.http, reason: "event_stream_slow"), 1)
        XCTAssertLessThan(worstTurnNs, 50_000_000, "a full stream never blocks the loop")
        Thread {
            slowClosed.set(slowClient.get()?.waitForClose() ?? false)
        }.start()
        XCTAssertTrue(fixture.turn { slowClosed.isSet })
        XCTAssertEqual(slowClosed.get(), true, "the dropped stream is closed")
        XCTAssertNotNil(fastClient.get())
    }

    func testAStalledStreamIsDroppedAfterTheStallTimeout() throws {
        var limits = AdminLimits()
        limits.eventStreamSocketBufferBytes = 2 * 1024
        limits.eventStreamStallTimeoutNs = 300_000_000
        limits.sweepIntervalNs = 100_000_000
        let fixture = try LiveFixture(limits: limits)
        let port = fixture.port
        let opened = ResultBox<EventStreamClient>()
        Thread {
            if let client = try? EventStreamClient(port: port, receiveBufferBytes: 2048), client.open() == 200 {
                opened.set(client)
            }
        }.start()
        XCTAssertTrue(fixture.turn { opened.isSet && fixture.events.streamCount == 1 })
        // ~100 events of ~330 bytes: more than the kernel buffers hold, far less than our 64 KiB.
        for index in 0..<100 {
            fixture.events.beatSeen(FakeLiveSource.beat(Int64(index)))
            fixture.loop.turn(timeoutNs: 0)
        }
        XCTAssertEqual(fixture.events.streamCount, 1, "not dropped for size")
        let start = Date()
        XCTAssertTrue(fixture.turn(seconds: 5) { fixture.events.streamCount == 0 })
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.2, "dropped at the stall timeout, not before")
        XCTAssertEqual(fixture.events.stats.droppedSlow, 1)
        _ = opened.get()
    }

    func testFanOutWaitsWhileABeatIsDueAndDoesNothingWithoutStreams() throws {
        let fixture = try LiveFixture()
        fixture.events.beatSeen(FakeLiveSource.beat(1))
        fixture.loop.turn(timeoutNs: 0)
        XCTAssertEqual(fixture.events.stats.beatEvents, 0, "no stream: nothing queued or sent")
        let port = fixture.port
        let box = ResultBox<[Int]>()
        let client = ResultBox<EventStreamClient>()
        Thread {
            guard let stream = try? EventStreamClient(port: port), stream.open() == 200,
                stream.next(named: "state") != nil
            else { return }
            client.set(stream)
            box.set([stream.next(named: "beat")?.json["beat_index"] as? Int ?? -1])
        }.start()
        XCTAssertTrue(fixture.turn { client.isSet })
        fixture.source.untilBeat = 1_000_000  // 1 ms: inside the quiet window
        fixture.events.beatSeen(FakeLiveSource.beat(2))
        for _ in 0..<5 { fixture.loop.turn(timeoutNs: 0) }
        XCTAssertEqual(fixture.events.stats.beatEvents, 0, "nothing written while a beat is due")
        XCTAssertGreaterThan(fixture.events.stats.deferredForBeat, 0)
        fixture.source.untilBeat = 100_000_000
        XCTAssertTrue(fixture.turn { box.isSet })
        XCTAssertEqual(box.get(), [2])
    }
}
