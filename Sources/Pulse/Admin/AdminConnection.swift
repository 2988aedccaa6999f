// Admin: one HTTP/1.1 connection of the admin server, as a LoopHandler.
//
// Bytes are read into a preallocated buffer and fed to node's http-parser
// through its C callbacks; the parser pauses at the end of every message, so
// requests are handled strictly one at a time and in order. A request whose
// answer comes later (a tempo change waiting for a commit) stops parsing until
// it is answered, so later pipelined responses queue up behind it. Responses go
// to an output buffer written at once; write interest is registered only when
// the socket would block. After a closing response the write side is shut and
// input is drained for a short while ("lingering close"), so the client reads
// the response rather than a reset.
//
// `GET /events` turns the connection into an event stream (AdminEvents):
// no more requests are parsed, input is read only to notice the close, and
// events are queued up to `eventStreamBufferBytes` (the output buffer is
// reserved at that size once, so queueing never reallocates); an event that
// does not fit, or no byte accepted for `eventStreamStallTimeoutNs`, drops it.
import CHttpParser
import CLoop
import Glibc

final class AdminConnection: LoopHandler {
    enum Phase {
        /// Reading and answering requests.
        case open
        /// A closing response is queued; no more requests are read.
        case closingAfterFlush
        /// Write side shut; input is read and dropped until EOF or the linger deadline.
        case lingering
        /// An event stream (`GET /events`): events out, input dropped until EOF.
        case streaming
        case closed
    }

    let fd: Int32
    private(set) var token: UInt32 = 0
    private unowned let server: AdminServer
    private let limits: AdminLimits
    private let parser: UnsafeMutablePointer<http_parser>
    private let readBuffer: UnsafeMutablePointer<UInt8>
    /// Unparsed input is `readBuffer[readStart..<readEnd]`.
    private var readStart = 0
    private var readEnd = 0
    private var output: [UInt8] = []
    private var outputHead = 0
    private(set) var phase = Phase.open
    private var interest: UInt32 = 0
    /// The peer shut its write side.
    private var eof = false
    /// A request was handed to the router and is not answered yet.
    private(set) var awaitingResponse = false
    private var requestSerial: UInt64 = 0
    private var inDispatch = false
    private var requestsLeftThisEvent: Int
    /// Set while queued on the server's deferred-work list.
    var isDeferred = false
    /// Monotonic instant by which the next request must be complete (or, when
    /// closing, by which the connection is closed).
    private var deadlineNs: Int64
    /// Streaming: monotonic time the socket last took bytes (or the queue was empty).
    private var lastProgressNs: Int64 = 0

    // The message being parsed.
    private var messageInProgress = false
    private var target: [UInt8] = []
    private var body: [UInt8] = []
    private var headerBytes = 0
    private var headerName: [UInt8] = []
    private var inHeaderValue = false
    private var trackedHeader = TrackedHeader.other
    private var authorization: [UInt8]?
    /// `Host`, `Origin`, `Content-Type` (AdminBrowserGuard); at most 256 bytes kept each.
    private var hostValue: [UInt8]?
    private var originValue: [UInt8]?
    private var contentTypeValue: [UInt8]?
    private var expectValue: [UInt8] = []
    private var method: UInt32 = 0
    private var http10 = false
    private var keepAlive = true
    /// A limit hit inside a parser callback, reported once the parser stops.
    private var callbackFailure: (status: Int, code: String, message: String)?

    private enum TrackedHeader {
        case other, authorization, expect, host, origin, contentType
    }

    init(fd: Int32, server: AdminServer, limits: AdminLimits, nowNs: Int64) {
        self.fd = fd
        self.server = server
        self.limits = limits
        self.parser = .allocate(capacity: 1)
        self.readBuffer = .allocate(capacity: limits.readBufferBytes)
        self.requestsLeftThisEvent = limits.maxRequestsPerEvent
        self.deadlineNs = nowNs + limits.idleTimeoutNs
        http_parser_init(parser, HTTP_REQUEST)
        parser.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        target.reserveCapacity(256)
        headerName.reserveCapacity(32)
    }

    deinit {
        parser.deallocate()
        readBuffer.deallocate()
    }

    /// Called once by the server after registration.
    func attach(token: UInt32, interest: UInt32) {
        self.token = token
        self.interest = interest
    }

    private var outputPending: Int { output.count - outputHead }
    /// True while bytes of an unfinished request have been received.
    var hasPartialRequest: Bool { messageInProgress || readEnd > readStart }

    // MARK: - Loop events

    func loopEvent(token: UInt32, events: UInt32) {
        requestsLeftThisEvent = limits.maxRequestsPerEvent
        if events & UInt32(CLOOP_ERROR) != 0 {
            close()
            return
        }
        if events & UInt32(CLOOP_HANGUP) != 0, interest & UInt32(CLOOP_READ) == 0 {
            // Not reading, so this is a full hangup (EPOLLHUP): nobody is left to answer.
            close()
            return
        }
        if events & UInt32(CLOOP_WRITE) != 0 {
            flush()
            if phase == .open { pump() }
        }
        if phase != .closed, events & UInt32(CLOOP_READ | CLOOP_HANGUP) != 0 {
            readAvailable()
        }
        updateInterest()
    }

    /// More work for this connection in a later turn (server's deferred list).
    func resumeDeferred() {
        guard phase != .closed else { return }
        requestsLeftThisEvent = limits.maxRequestsPerEvent
        pump()
    }

    private func readAvailable() {
        var budget = limits.maxReadBytesPerEvent
        while budget > 0 {
            switch phase {
            case .closed, .closingAfterFlush:
                return
            case .lingering, .streaming:
                let n = recv(fd, readBuffer, min(limits.readBufferBytes, budget), 0)
                if n > 0 {
                    budget -= n
                    continue
                }
                if n < 0 && (errno == EINTR) { continue }
                if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
                close()
                return
            case .open:
                guard !eof else { return }
                compactReadBuffer()
                let room = limits.readBufferBytes - readEnd
                guard room > 0 else { return }
                let n = recv(fd, readBuffer + readEnd, min(room, budget), 0)
                if n > 0 {
                    readEnd += n
                    budget -= n
                    pump()
                    // Stop reading when parsing stopped short (waiting, deferred, backpressure).
                    if readEnd > readStart || awaitingResponse { return }
                    continue
                }
                if n == 0 {
                    eof = true
                    pump()
                    return
                }
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { return }
                close()
                return
            }
        }
    }

    // MARK: - Parsing and dispatch

    /// Parses buffered input and answers complete requests, within this
    /// event's request budget; then writes and updates interest.
    private func pump() {
        while phase == .open, !awaitingResponse, readStart < readEnd,
            outputPending <= limits.maxOutputBufferedBytes
        {
            if requestsLeftThisEvent == 0 {
                server.deferWork(self)
                break
            }
            let consumed = readBuffer.withMemoryRebound(to: CChar.self, capacity: readEnd) { chars in
                http_parser_execute(parser, adminParserSettings, chars + readStart, readEnd - readStart)
            }
            readStart += consumed
            let status = parser.pointee.http_errno
            if status == HPE_PAUSED.rawValue {
                http_parser_pause(parser, 0)
                requestsLeftThisEvent -= 1
                dispatchRequest()
            } else if status != HPE_OK.rawValue {
                protocolError(parserStatus: status)
            } else if consumed == 0 || readStart < readEnd {
                // Nothing more the parser will take (an upgrade): treat as the end.
                protocolError(parserStatus: HPE_INVALID_CONSTANT.rawValue)
            }
        }
        if eof, phase == .open, !awaitingResponse, readStart == readEnd {
            phase = .closingAfterFlush
        }
        compactReadBuffer()
        flush()
        updateInterest()
    }

    private func dispatchRequest() {
        guard let path = AdminHTTP.path(ofTarget: target) else {
            fail(400, code: "bad_request", message: "invalid request target")
            return
        }
        let request = AdminRequest(
            method: method, path: path, body: body, authorization: authorization, host: hostValue,
            origin: originValue, contentType: contentTypeValue)
        let refusal = server.router.screen(request)
        if refusal == nil, path == "/events", method == HTTP_GET.rawValue, let events = server.events {
            startStream(events)
            return
        }
        let keepAlive = self.keepAlive
        let http10 = self.http10
        requestSerial &+= 1
        let serial = requestSerial
        awaitingResponse = true
        inDispatch = true
        server.router.handle(request, screened: refusal) { [weak self] response in
            self?.deliver(
                response, serial: serial, keepAlive: keepAlive, http10: http10, headOnly: request.isHead)
        }
        inDispatch = false
    }

    /// The router's answer; tolerates a closed connection and a second call.
    private func deliver(
        _ response: AdminResponse, serial: UInt64, keepAlive: Bool, http10: Bool, headOnly: Bool
    ) {
        guard phase == .open, awaitingResponse, serial == requestSerial else { return }
        awaitingResponse = false
        server.noteResponse()
        AdminHTTP.serialize(
            response, keepAlive: keepAlive, http10: http10, headOnly: headOnly, into: &output)
        deadlineNs = cloop_monotonic_ns() + limits.idleTimeoutNs
        if !keepAlive { phase = .closingAfterFlush }
        if !inDispatch {
            // Answered later: carry on with what was pipelined behind it.
            requestsLeftThisEvent = limits.maxRequestsPerEvent
            pump()
        }
    }

    // MARK: - Event stream

    private func startStream(_ events: AdminEvents) {
        server.noteResponse()
        switch events.open(self) {
        case .refused(let response):
            AdminHTTP.serialize(response, keepAlive: false, http10: http10, headOnly: false, into: &output)
            phase = .closingAfterFlush
            deadlineNs = cloop_monotonic_ns() + limits.lingerTimeoutNs
        case .accepted(let first):
            phase = .streaming
            readStart = 0
            readEnd = 0
            var size = limits.eventStreamSocketBufferBytes
            setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            output.reserveCapacity(max(limits.eventStreamBufferBytes, output.count + first.count))
            output.append(contentsOf: first)
            lastProgressNs = cloop_monotonic_ns()
        }
    }

    /// Queues one event on a stream and writes what the socket takes; drops
    /// the stream when the event does not fit in `eventStreamBufferBytes`.
    func sendEvent(_ bytes: [UInt8]) {
        guard phase == .streaming else { return }
        if outputHead > 0 {
            output.removeSubrange(0..<outputHead)  // in place: the capacity stays
            outputHead = 0
        }
        guard output.count + bytes.count <= limits.eventStreamBufferBytes else {
            server.events?.noteSlowDrop()
            close()
            return
        }
        if output.isEmpty { lastProgressNs = cloop_monotonic_ns() }
        output.append(contentsOf: bytes)
        flush()
        updateInterest()
    }

    private func protocolError(parserStatus: UInt32) {
        if let failure = callbackFailure {
            fail(failure.status, code: failure.code, message: failure.message)
        } else if parserStatus == HPE_HEADER_OVERFLOW.rawValue {
            fail(431, code: "headers_too_large", message: "request headers are too large")
        } else {
            let name = String(cString: http_errno_description(http_errno(rawValue: parserStatus)))
            fail(400, code: "bad_request", message: "malformed request: \(name)")
        }
    }

    /// Queues a closing error response and stops reading requests.
    private func fail(_ status: Int, code: String, message: String) {
        server.noteProtocolError(status: status, method: method, path: AdminHTTP.path(ofTarget: target))
        AdminHTTP.serialize(
            .error(status, code: code, message: message), keepAlive: false, http10: false,
            headOnly: false,
            into: &output)
        phase = .closingAfterFlush
        readStart = 0
        readEnd = 0
        deadlineNs = cloop_monotonic_ns() + limits.lingerTimeoutNs
    }

    private func compactReadBuffer() {
        guard readStart > 0 else { return }
        let remaining = readEnd - readStart
        if remaining > 0 { memmove(readBuffer, readBuffer + readStart, remaining) }
        readStart = 0
        readEnd = remaining
    }

    // MARK: - Writing and closing

    /// Writes queued output until done or the socket would block; starts the
    /// lingering close once a closing response is out.
    private func flush() {
        while outputHead < output.count {
            let n = output.withUnsafeBytes { raw in
                send(fd, raw.baseAddress! + outputHead, raw.count - outputHead, Int32(MSG_NOSIGNAL))
            }
            if n > 0 {
                outputHead += n
                if phase == .streaming { lastProgressNs = cloop_monotonic_ns() }
                continue
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { break }
            close()
            return
        }
        if outputHead == output.count, outputHead > 0 {
            output.removeAll(keepingCapacity: phase == .streaming || output.capacity <= 64 * 1024)
            outputHead = 0
        }
        if phase == .closingAfterFlush, outputPending == 0 { startLinger() }
    }

    private func startLinger() {
        if eof {
            close()
            return
        }
        shutdown(fd, Int32(SHUT_WR))
        phase = .lingering
        readStart = 0
        readEnd = 0
        deadlineNs = cloop_monotonic_ns() + limits.lingerTimeoutNs
    }

    private func updateInterest() {
        guard phase != .closed else { return }
        var wanted: UInt32 = 0
        switch phase {
        case .open:
            if !eof, readEnd < limits.readBufferBytes, outputPending <= limits.maxOutputBufferedBytes {
                wanted |= UInt32(CLOOP_READ)
            }
        case .lingering, .streaming:
            wanted |= UInt32(CLOOP_READ)
        case .closingAfterFlush, .closed:
            break
        }
        if outputPending > 0 { wanted |= UInt32(CLOOP_WRITE) }
        if wanted != interest {
            interest = wanted
            server.loop.modify(token: token, interest: wanted)
        }
    }

    /// Unregisters and closes the socket; later replies are ignored.
    func close() {
        guard phase != .closed else { return }
        phase = .closed
        awaitingResponse = false
        output = []
        outputHead = 0
        server.connectionDidClose(self)
    }

    /// Enforces the deadlines; called by the server's sweep timer.
    func sweep(nowNs: Int64) {
        if phase == .streaming { return sweepStream(nowNs: nowNs) }
        guard nowNs >= deadlineNs else { return }
        switch phase {
        case .closed, .streaming:
            return
        case .open:
            if awaitingResponse { return }
            server.noteTimeout()
            if hasPartialRequest && outputPending == 0 {
                fail(408, code: "request_timeout", message: "the request did not arrive in time")
                flush()
                updateInterest()
            } else {
                close()
            }
        case .closingAfterFlush, .lingering:
            close()
        }
    }

    /// Drops a stream that had bytes queued and accepted none for the stall timeout.
    private func sweepStream(nowNs: Int64) {
        guard outputPending > 0, nowNs - lastProgressNs > limits.eventStreamStallTimeoutNs else { return }
        server.events?.noteSlowDrop()
        close()
    }

    // MARK: - Parser callbacks (through `adminParserSettings`)

    fileprivate static func of(_ parser: UnsafeMutablePointer<http_parser>?) -> AdminConnection {
        Unmanaged<AdminConnection>.fromOpaque(parser!.pointee.data).takeUnretainedValue()
    }

    fileprivate func onMessageBegin() -> Int32 {
        messageInProgress = true
        target.removeAll(keepingCapacity: true)
        body.removeAll(keepingCapacity: true)
        headerName.removeAll(keepingCapacity: true)
        expectValue.removeAll(keepingCapacity: true)
        authorization = nil
        hostValue = nil
        originValue = nil
        contentTypeValue = nil
        inHeaderValue = false
        trackedHeader = .other
        headerBytes = 0
        method = 0
        callbackFailure = nil
        return 0
    }

    private func countHeaderBytes(_ length: Int) -> Int32 {
        headerBytes += length
        guard headerBytes <= limits.maxHeaderBytes else {
            callbackFailure = (
                431, "headers_too_large", "request headers exceed \(limits.maxHeaderBytes) bytes"
            )
            return 1
        }
        return 0
    }

    fileprivate func onURL(_ at: UnsafePointer<CChar>, _ length: Int) -> Int32 {
        if countHeaderBytes(length) != 0 { return 1 }
        at.withMemoryRebound(to: UInt8.self, capacity: length) {
            target.append(contentsOf: UnsafeBufferPointer(start: $0, count: length))
        }
        return 0
    }

    fileprivate func onHeaderField(_ at: UnsafePointer<CChar>, _ length: Int) -> Int32 {
        if countHeaderBytes(length + 4) != 0 { return 1 }
        if inHeaderValue {
            headerName.removeAll(keepingCapacity: true)
            inHeaderValue = false
        }
        let room = 32 - headerName.count
        if room > 0 {
            at.withMemoryRebound(to: UInt8.self, capacity: length) {
                headerName.append(contentsOf: UnsafeBufferPointer(start: $0, count: min(room, length)))
            }
        }
        return 0
    }

    fileprivate func onHeaderValue(_ at: UnsafePointer<CChar>, _ length: Int) -> Int32 {
        if countHeaderBytes(length) != 0 { return 1 }
        if !inHeaderValue {
            inHeaderValue = true
            trackedHeader = Self.tracked(headerName)
            switch trackedHeader {
            case .authorization: authorization = []
            case .host: Self.startValue(&hostValue)
            case .origin: Self.startValue(&originValue)
            case .contentType: Self.startValue(&contentTypeValue)
            case .expect, .other: break
            }
        }
        let bytes = UnsafeRawBufferPointer(start: at, count: length)
        switch trackedHeader {
        case .authorization:
            // Over-long values are cut; the cut value can never match the token.
            let room = limits.maxAuthorizationBytes + 1 - (authorization?.count ?? 0)
            if room > 0 { authorization?.append(contentsOf: bytes.prefix(room)) }
        case .expect:
            let room = 32 - expectValue.count
            if room > 0 { expectValue.append(contentsOf: bytes.prefix(room)) }
        case .host: Self.appendValue(&hostValue, bytes)
        case .origin: Self.appendValue(&originValue, bytes)
        case .contentType: Self.appendValue(&contentTypeValue, bytes)
        case .other:
            break
        }
        return 0
    }

    private static func tracked(_ name: [UInt8]) -> TrackedHeader {
        switch String(decoding: asciiLowercased(name), as: UTF8.self) {
        case "authorization": return .authorization
        case "expect": return .expect
        case "host": return .host
        case "origin": return .origin
        case "content-type": return .contentType
        default: return .other
        }
    }

    /// A tracked header's value begins: a repeat is joined with `,`, so that
    /// no check accepts a request naming two hosts, origins or types.
    private static func startValue(_ value: inout [UInt8]?) {
        if value == nil { value = [] } else { appendValue(&value, [UInt8(ascii: ",")]) }
    }

    /// Keeps at most 257 bytes (more than any accepted value, so a cut one still fails).
    private static func appendValue<Bytes: Collection<UInt8>>(_ value: inout [UInt8]?, _ bytes: Bytes) {
        let room = 257 - (value?.count ?? 0)
        if room > 0 { value?.append(contentsOf: bytes.prefix(room)) }
    }

    private static func asciiLowercased(_ bytes: [UInt8]) -> [UInt8] {
        bytes.map { $0 >= 65 && $0 <= 90 ? $0 | 0x20 : $0 }
    }

    fileprivate func onHeadersComplete() -> Int32 {
        method = parser.pointee.method
        http10 = parser.pointee.http_major == 1 && parser.pointee.http_minor == 0
        let length = parser.pointee.content_length
        if length != UInt64.max, length > UInt64(limits.maxBodyBytes) {
            callbackFailure = (413, "body_too_large", "request body exceeds \(limits.maxBodyBytes) bytes")
            return -1
        }
        if !http10, length != UInt64.max, length > 0,
            Self.asciiLowercased(expectValue) == Array("100-continue".utf8)
        {
            output.append(contentsOf: AdminHTTP.continueLine)
        }
        return 0
    }

    fileprivate func onBody(_ at: UnsafePointer<CChar>, _ length: Int) -> Int32 {
        guard body.count + length <= limits.maxBodyBytes else {
            callbackFailure = (413, "body_too_large", "request body exceeds \(limits.maxBodyBytes) bytes")
            return 1
        }
        body.append(contentsOf: UnsafeRawBufferPointer(start: at, count: length))
        return 0
    }

    fileprivate func onMessageComplete() -> Int32 {
        messageInProgress = false
        keepAlive = http_should_keep_alive(parser) != 0 && parser.pointee.upgrade == 0
        http_parser_pause(parser, 1)
        return 0
    }
}

/// The parser callbacks, shared by every connection (`parser.data` names it).
let adminParserSettings: UnsafeMutablePointer<http_parser_settings> = {
    let settings = UnsafeMutablePointer<http_parser_settings>.allocate(capacity: 1)
    http_parser_settings_init(settings)
    settings.pointee.on_message_begin = { AdminConnection.of($0).onMessageBegin() }
    settings.pointee.on_url = { AdminConnection.of($0).onURL($1!, $2) }
    settings.pointee.on_header_field = { AdminConnection.of($0).onHeaderField($1!, $2) }
    settings.pointee.on_header_value = { AdminConnection.of($0).onHeaderValue($1!, $2) }
    settings.pointee.on_headers_complete = { AdminConnection.of($0).onHeadersComplete() }
    settings.pointee.on_body = { AdminConnection.of($0).onBody($1!, $2) }
    settings.pointee.on_message_complete = { AdminConnection.of($0).onMessageComplete() }
    return settings
}()
