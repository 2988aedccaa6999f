// Admin test support: a fake AdminBackend, a raw POSIX-socket HTTP client
// (so tests control every byte), and a fixture that turns a real EventLoop on
// the test thread while client code runs on a background thread. Every wait is
// bounded in time.
import CLoop
import Foundation
import Glibc
import XCTest

@testable import Pulse

/// A scripted backend; every call happens on the loop (test) thread.
final class FakeAdminBackend: AdminBackend {
    var tempo = TempoStatus(
        current_bpm: 120, pending_bpm: 120, can_change: true, next_change: "2025-09-04T12:00:00Z",
        reason: "")
    var drift = DriftStatus(
        timer_drift_percent: 0.5, hlc_drift_seconds: 0.001, last_sync_time: nil,
        degradation_mode: false,
        within_limits: true)
    var leader = LeaderStatus(
        node_id: "pulse-a", is_leader: true, leader: "pulse-a", cluster_size: 1,
        stats: .init(
            term: 1, commit_index: 3, last_contact_ms: 0, leadership_changes: 1, state: "leader"))
    var components: [String: ComponentHealth] = [
        "loop": ComponentHealth(status: "ok", detail: "turning"),
        "nats": ComponentHealth(status: "ok", detail: "connected"),
    ]
    var ready = (ready: true, reason: "leader")
    var metrics = "# TYPE backbeat_beats_total counter\nbackbeat_beats_total 7\n"
    /// The answer to the next tempo change; nil holds the reply in `heldReplies`.
    var decision: TempoDecision? = .scheduled(
        ScheduledTempoChange(
            tempo_bpm: 126, previous_bpm: 120, apply_at_beat: 16, apply_at: "2025-09-04T12:00:08Z",
            justification: "load"))
    private(set) var requests: [TempoRequest] = []
    private(set) var refusals: [String] = []
    var heldReplies: [(TempoDecision) -> Void] = []

    func tempoStatus() -> TempoStatus { tempo }
    func requestTempoChange(_ request: TempoRequest, reply: @escaping (TempoDecision) -> Void) {
        requests.append(request)
        if let decision { reply(decision) } else { heldReplies.append(reply) }
    }
    func recordTempoRefusal(reason: String) { refusals.append(reason) }
    func driftStatus() -> DriftStatus { drift }
    func leaderStatus() -> LeaderStatus { leader }
    func health() -> [String: ComponentHealth] { components }
    func readiness() -> (ready: Bool, reason: String) { ready }
    func metricsText() -> String { metrics }
    var beats: [BeatRecord] = []
    func recentBeats() -> [BeatRecord] { beats }
}

/// One response as read off the wire.
struct RawResponse {
    var status: Int
    /// Lower-cased names.
    var headers: [String: String]
    var body: [UInt8]

    var text: String { String(decoding: body, as: UTF8.self) }
    var json: [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any]) ?? [:]
    }
    var keys: Set<String> { Set(json.keys) }
    var contentType: String? { headers["content-type"] }
}

/// A blocking TCP client with receive/send timeouts.
final class RawClient {
    let fd: Int32
    private var buffer: [UInt8] = []
    private(set) var closed = false

    init(port: Int, timeoutMs: Int = 5000) throws {
        fd = try Harness.connectLoopback(port: port, timeoutMs: timeoutMs)
    }

    deinit { close() }

    /// Sets the receive timeout (for "nothing arrives" checks).
    func setReceiveTimeout(ms: Int) {
        var timeout = timeval(tv_sec: ms / 1000, tv_usec: (ms % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    @discardableResult
    func send(_ text: String) -> Bool { send(bytes: Array(text.utf8)) }

    @discardableResult
    func send(bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL))
            }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }

    /// Reads more bytes; false on EOF, error or timeout.
    private func fill() -> Bool {
        Harness.receive(fd, appendingTo: &buffer)
    }

    /// The next complete response; nil when the connection ends (or times out) first.
    /// `head`: the response to a HEAD request has no body.
    func readResponse(head: Bool = false) -> RawResponse? {
        let separator: [UInt8] = [13, 10, 13, 10]
        var headerEnd: Int?
        while headerEnd == nil {
            if buffer.count >= 4 {
                for i in 0...(buffer.count - 4) where Array(buffer[i..<(i + 4)]) == separator {
                    headerEnd = i
                    break
                }
            }
            if headerEnd == nil && !fill() { return nil }
        }
        let head_ = String(decoding: buffer[0..<headerEnd!], as: UTF8.self)
        var lines = head_.components(separatedBy: "\r\n")
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { return nil }
        var headers: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(
                in: .whitespaces)
        }
        let length = head || status == 100 ? 0 : Int(headers["content-length"] ?? "0") ?? 0
        let bodyStart = headerEnd! + 4
        while buffer.count < bodyStart + length {
            if !fill() { return nil }
        }
        let body = Array(buffer[bodyStart..<(bodyStart + length)])
        buffer.removeFirst(bodyStart + length)
        return RawResponse(status: status, headers: headers, body: body)
    }

    /// True when the peer closes (EOF or reset) within the receive timeout
    /// without sending more than `ignoring` bytes of data first.
    func waitForClose() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                buffer.append(contentsOf: chunk[0..<n])
                continue
            }
            if n == 0 { return true }
            return errno == ECONNRESET
        }
    }

    /// Bytes received but not consumed by `readResponse`.
    var leftover: [UInt8] { buffer }

    func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }

    /// Closes with a reset (SO_LINGER 0) instead of a FIN.
    func reset() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close()
    }

    /// Sends one request and reads its response.
    func request(_ text: String, head: Bool = false) -> RawResponse? {
        guard send(text) else { return nil }
        return readResponse(head: head)
    }
}

/// A request in wire form.
func httpRequest(
    _ method: String, _ path: String, body: String? = nil, headers: [String] = [],
    version: String = "HTTP/1.1"
) -> String {
    var text = "\(method) \(path) \(version)\r\nHost: 127.0.0.1\r\n"
    for header in headers { text += header + "\r\n" }
    if let body { text += "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n" }
    text += "\r\n"
    if let body { text += body }
    return text
}

/// A server on an ephemeral port whose loop is turned by the test thread.
final class AdminFixture {
    let loop: EventLoop
    let backend = FakeAdminBackend()
    let server: AdminServer
    var port: Int { server.boundPort }

    init(limits: AdminLimits = AdminLimits(), authToken: String? = nil, rejected: RejectedInput? = nil) throws {
        loop = try EventLoop(maxSlots: 512)
        loop.bindToCurrentThread()
        server = AdminServer(
            loop: loop, backend: backend, port: 0, authToken: authToken, limits: limits, rejected: rejected)
        try server.start()
    }

    deinit { server.stop() }

    /// Turns the loop until `condition` holds or `seconds` pass.
    @discardableResult
    func turn(until condition: () -> Bool, seconds: Double = 5) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            loop.turn(timeoutNs: 2_000_000)
        }
        return condition()
    }

    /// Runs `body` on a client thread while turning the loop on this one;
    /// nil if it did not finish within `seconds`.
    func client<T>(seconds: Double = 10, _ body: @escaping () -> T) -> T? {
        let box = ResultBox<T>()
        let thread = Thread { box.set(body()) }
        thread.start()
        turn(until: { box.isSet }, seconds: seconds)
        return box.get()
    }

    /// A fresh connection sends one request and reads one response.
    func exchange(_ text: String, head: Bool = false) -> RawResponse? {
        let port = self.port
        return client {
            guard let client = try? RawClient(port: port) else { return nil }
            return client.request(text, head: head)
        } ?? nil
    }
}

final class ResultBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T?
    private var done = false
    func set(_ newValue: T) {
        lock.lock()
        value = newValue
        done = true
        lock.unlock()
    }
    var isSet: Bool {
        lock.lock()
        defer { lock.unlock() }
        return done
    }
    func get() -> T? {
        lock.lock()
        defer { lock.unlock() }
        return value
    }
}
