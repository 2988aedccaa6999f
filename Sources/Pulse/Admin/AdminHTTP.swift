// Admin: the HTTP vocabulary of the admin server — its limits, the request
// and response values that pass between a connection and the router, and the
// serialisation of a response onto a connection's output buffer.
import CHttpParser
import Foundation

/// Limits of the admin server. Every one bounds memory or loop time that a
/// client could otherwise claim; the defaults fit a loopback admin API.
struct AdminLimits {
    /// Request line plus header names and values; more is answered 431 and closed.
    var maxHeaderBytes = 8 * 1024
    /// Request body (Content-Length or the sum of chunks); more is answered 413 and closed.
    var maxBodyBytes = 4 * 1024
    /// Open connections; one more is accepted, answered 503 and closed at once.
    var maxConnections = 64
    /// Time a request has to arrive completely, counted from the accept or
    /// from the previous response. A partial request is then answered 408 and
    /// closed; an idle keep-alive connection is closed silently. A request
    /// waiting for the backend's decision is exempt.
    var idleTimeoutNs: Int64 = 10_000_000_000
    /// After a closing response: how long input is drained (so the client
    /// reads the response instead of a reset) before the socket is closed.
    var lingerTimeoutNs: Int64 = 2_000_000_000
    /// Period of the single monotonic timer that enforces both timeouts.
    var sweepIntervalNs: Int64 = 1_000_000_000
    /// Preallocated per connection; bytes read but not yet parsed live here.
    var readBufferBytes = 16 * 1024
    /// Bytes read from one connection per loop callback.
    var maxReadBytesPerEvent = 64 * 1024
    /// Requests handled for one connection per loop callback; the rest wait
    /// for the next turn, so one pipelining client cannot hold the loop.
    var maxRequestsPerEvent = 8
    /// Connections accepted per listener callback.
    var maxAcceptsPerEvent = 16
    /// While more than this is waiting to be written, no further request of
    /// the connection is parsed (one response may exceed it; none is added).
    var maxOutputBufferedBytes = 256 * 1024
    /// Longest `justification` in `POST /tempo`, in UTF-8 bytes.
    var maxJustificationBytes = 1024
    /// `Authorization` values longer than this are kept no further (and fail).
    var maxAuthorizationBytes = 1024

    // Live view (`GET /events`, Server-Sent Events; AdminEvents.swift).
    /// Open event streams; one more is answered 503 `too_many_event_streams`.
    /// Each costs at most `eventStreamBufferBytes` of our memory and one send
    /// per event per beat on the loop (about 5 µs), so 64 streams bound the
    /// worst case at 4 MiB and ~0.3 ms of loop time per beat, after the beat.
    /// 64 leaves room for a team's dashboards (and the 50-stream test).
    var maxEventStreams = 64
    /// Bytes queued for one stream that the socket has not taken yet. An event
    /// that does not fit drops the stream (the browser reconnects and gets the
    /// current state): a slow reader costs this much and no more. 64 KiB holds
    /// ~200 beat events, 20 s at 600 bpm, far more than a live browser lags.
    var eventStreamBufferBytes = 64 * 1024
    /// A stream with queued bytes that accepted none for this long is dropped
    /// even before its buffer fills (a browser tab frozen in the background).
    var eventStreamStallTimeoutNs: Int64 = 10_000_000_000
    /// SO_SNDBUF of a stream socket: small, so that a reader that stopped
    /// reading shows up in our bounded buffer rather than in kernel memory.
    var eventStreamSocketBufferBytes: Int32 = 16 * 1024
    /// Frames seen on the beat subject and not yet sent to the streams (they
    /// are sent before the loop sleeps, normally one per turn); more in one
    /// turn keeps the newest.
    var maxPendingBeatEvents = 16
    /// No event is written this close before the next beat's instant: the
    /// fan-out waits for the turn after the beat, so it can never delay it.
    var eventQuietBeforeBeatNs: Int64 = 5_000_000
    /// A comment line sent to every stream this often when nothing else was
    /// (a node that sees no frames): proxies keep the stream, and a browser
    /// whose node vanished without a FIN notices.
    var eventKeepaliveNs: Int64 = 15_000_000_000

    init() {}

    /// Traps on limits that would make the server misbehave.
    func validate() {
        precondition(maxHeaderBytes >= 256, "maxHeaderBytes")
        precondition(maxBodyBytes >= 64, "maxBodyBytes")
        precondition(maxConnections >= 1, "maxConnections")
        precondition(idleTimeoutNs > 0 && lingerTimeoutNs > 0 && sweepIntervalNs > 0, "timeouts")
        precondition(readBufferBytes >= 512 && maxReadBytesPerEvent >= 1, "read sizes")
        precondition(maxRequestsPerEvent >= 1 && maxAcceptsPerEvent >= 1, "per-event bounds")
        precondition(maxOutputBufferedBytes >= 1, "maxOutputBufferedBytes")
        precondition(maxEventStreams >= 0 && maxPendingBeatEvents >= 1, "event stream counts")
        precondition(eventStreamBufferBytes >= 4096 && eventStreamSocketBufferBytes >= 1024, "event stream buffers")
        precondition(
            eventStreamStallTimeoutNs > 0 && eventQuietBeforeBeatNs >= 0 && eventKeepaliveNs > 0, "event timing")
    }
}

/// One parsed request, as the router sees it.
struct AdminRequest {
    /// `http_method` raw value (`HTTP_GET.rawValue`, ...).
    var method: UInt32
    /// The path without query or fragment.
    var path: String
    var body: [UInt8]
    /// The `Authorization` header value, nil when absent.
    var authorization: [UInt8]?
    /// `Host`, `Origin` and `Content-Type` (AdminBrowserGuard), nil when absent;
    /// a repeated header's values are joined by `,` (which no check accepts).
    var host: [UInt8]? = nil
    var origin: [UInt8]? = nil
    var contentType: [UInt8]? = nil

    static let getMethod = HTTP_GET.rawValue
    var isHead: Bool { method == HTTP_HEAD.rawValue }
    var methodName: String { String(cString: http_method_str(http_method(rawValue: method))) }
}

/// A response before serialisation.
struct AdminResponse {
    var status: Int
    var contentType: String?
    var body: [UInt8]
    var headers: [(name: String, value: String)] = []

    static let jsonType = "application/json"
    static let metricsType = "text/plain; version=0.0.4; charset=utf-8"

    /// `{"error": message, "code": code}` with `Content-Type: application/json`.
    static func error(
        _ status: Int, code: String, message: String, headers: [(name: String, value: String)] = []
    )
        -> AdminResponse
    {
        let body =
            (try? AdminJSON.encoder().encode(ErrorBody(error: message, code: code))).map { [UInt8]($0) } ?? []
        return AdminResponse(status: status, contentType: jsonType, body: body, headers: headers)
    }

    private struct ErrorBody: Encodable {
        var error: String
        var code: String
    }
}

/// How every JSON body of the admin API (and the timeline subject) is
/// written: keys sorted (`.sortedKeys`, at every level) and `/` unescaped.
/// The same state gives the same bytes on every request, so bodies diff and
/// read cleanly. Sorted rather than the seed's documented order: Foundation's
/// encoder on Linux keeps keys in a hash table (a different order per
/// encoding), and an ordered writer of our own is code to keep for a
/// cosmetic gain; clients read keys by name. (BeatFrames are different: they
/// are written by PulseCore's own encoder in the documented order.)
enum AdminJSON {
    static func encoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }
}

enum AdminHTTP {
    /// Appends the response to `output`. `keepAlive` false adds
    /// `Connection: close`; an HTTP/1.0 keep-alive gets `Connection: keep-alive`.
    /// `headOnly` keeps Content-Length but leaves the body out.
    static func serialize(
        _ response: AdminResponse, keepAlive: Bool, http10: Bool, headOnly: Bool,
        into output: inout [UInt8]
    ) {
        var head = "HTTP/1.1 \(response.status) \(reasonPhrase(response.status))\r\n"
        if let type = response.contentType { head += "Content-Type: \(type)\r\n" }
        head += "Content-Length: \(response.body.count)\r\n"
        head += "Cache-Control: no-store\r\n"
        for header in response.headers { head += "\(header.name): \(header.value)\r\n" }
        if !keepAlive {
            head += "Connection: close\r\n"
        } else if http10 {
            head += "Connection: keep-alive\r\n"
        }
        head += "\r\n"
        output.append(contentsOf: head.utf8)
        if !headOnly { output.append(contentsOf: response.body) }
    }

    static func reasonPhrase(_ status: Int) -> String {
        guard let code = UInt32(exactly: status) else { return "Unknown" }
        let text = String(cString: http_status_str(http_status(rawValue: code)))
        return text == "<unknown>" ? "Unknown" : text
    }

    static let continueLine: [UInt8] = Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)

    /// The path of a request target: origin form up to `?`/`#`, or the path
    /// of an absolute URI. Nil when the target is not a usable URL.
    static func path(ofTarget target: [UInt8]) -> String? {
        guard let first = target.first else { return nil }
        if first == UInt8(ascii: "/") {
            let end =
                target.firstIndex { $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") } ?? target.count
            return String(decoding: target[..<end], as: UTF8.self)
        }
        if first == UInt8(ascii: "*") { return "*" }
        // Absolute form (`http://host/path`): the path follows the authority.
        let lowered = target.prefix(8).map { $0 >= 65 && $0 <= 90 ? $0 | 0x20 : $0 }
        let scheme: Int
        if lowered.starts(with: Array("http://".utf8)) {
            scheme = 7
        } else if lowered.starts(with: Array("https://".utf8)) {
            scheme = 8
        } else {
            return nil
        }
        let rest = target[scheme...]
        guard let slash = rest.firstIndex(of: UInt8(ascii: "/")) else { return "/" }
        return path(ofTarget: Array(target[slash...]))
    }

    /// Equality whose time depends only on `expected.count`, not on where the
    /// inputs differ.
    static func constantTimeEqual(_ given: ArraySlice<UInt8>, _ expected: [UInt8]) -> Bool {
        var difference: UInt8 = given.count == expected.count ? 0 : 1
        let base = given.startIndex
        for i in 0..<expected.count {
            let byte = i < given.count ? given[base + i] : 0
            difference |= byte ^ expected[i]
        }
        return difference == 0
    }
}
