// Admin/AdminClient.swift — owns the command line's side of the admin API:
// one blocking HTTP/1.1 request (`Connection: close`) to a node, over plain
// TCP or, for `https://` URLs, TLS (OpenSSL: the server's certificate
// verified against `--ca` or the system's trust store, and its name against
// the URL's host), bounded in time (connect, send and receive timeouts) and
// in size. Used by `pulse backup` and `pulse members` (PulseTools), short-lived
// commands, and by a node's systemd readiness thread; never by a node's loop.
import ArgumentParser
import COpenSSL
import Foundation
import Glibc

/// A blocking HTTP/1.1 client for one request at a time.
public enum AdminClient {
    public struct Response {
        public var status: Int
        public var body: [UInt8]
        /// The body as text, for error messages.
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// Largest response read (a backup is a few hundred bytes).
    static let maxResponseBytes = 1 << 20

    /// How a command reaches the nodes: bearer token, timeout of each
    /// request, and the CA that signs an `https://` node's certificate
    /// (empty: the system's trust store).
    public struct Settings {
        public var token: String?
        public var timeoutMs: Int
        public var caFile = ""

        public init(token: String?, timeoutMs: Int, caFile: String = "") {
            self.token = token
            self.timeoutMs = timeoutMs
            self.caFile = caFile
        }
    }

    /// A parsed admin URL.
    struct Target: Equatable {
        var host: String
        var port: Int
        var tls: Bool
    }

    /// The comma-separated `--admin` list, each URL checked (`parseURL`);
    /// a one-line error when it names none or one is not usable.
    public static func urls(_ list: String) throws -> [String] {
        let urls = list.split(separator: ",").map(String.init).filter { !$0.isEmpty }
        guard !urls.isEmpty else { throw PulseError.config("--admin needs at least one URL") }
        for url in urls { _ = try parseURL(url) }
        return urls
    }

    /// `http://host:port`, `https://host[:port]` (default 443) or
    /// `host:port` (plain HTTP), an optional trailing `/`.
    static func parseURL(_ url: String) throws -> Target {
        var rest = Substring(url.trimmingCharacters(in: .whitespaces))
        var tls = false
        if rest.hasPrefix("https://") {
            rest = rest.dropFirst("https://".count)
            tls = true
        } else if rest.hasPrefix("http://") {
            rest = rest.dropFirst("http://".count)
        }
        while rest.hasSuffix("/") { rest = rest.dropLast() }
        if tls && !rest.isEmpty && (rest.hasSuffix("]") || !rest.contains(":")) { rest += ":443" }
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]),
            (1...65535).contains(port), colon > rest.startIndex, !rest.contains("/")
        else {
            throw PulseError.config("\(url) is not http://host:port or https://host[:port]")
        }
        var host = String(rest[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return Target(host: host, port: port, tls: tls)
    }

    /// GETs `path` from `url`. Throws `PulseError.startup` when the node
    /// cannot be reached, its certificate is not trusted, or it answers
    /// something that is not HTTP.
    public static func get(url: String, path: String, _ settings: Settings) throws -> Response {
        try request("GET", url: url, path: path, body: nil, settings)
    }

    /// POSTs a JSON `body` to `path` (`pulse members add`, leader transfer).
    public static func post(url: String, path: String, body: [UInt8], _ settings: Settings) throws -> Response {
        try request("POST", url: url, path: path, body: body, settings)
    }

    /// DELETEs `path` (`pulse members remove`).
    public static func delete(url: String, path: String, _ settings: Settings) throws -> Response {
        try request("DELETE", url: url, path: path, body: nil, settings)
    }

    /// One request (`method` and `path` are the caller's constants and
    /// percent-encoded names: no CR/LF), `Connection: close`.
    private static func request(
        _ method: String, url: String, path: String, body: [UInt8]?, _ settings: Settings
    ) throws -> Response {
        let target = try parseURL(url)
        let fd = try connect(host: target.host, port: target.port, timeoutMs: settings.timeoutMs)
        defer { close(fd) }
        var stream = Stream.plain(fd)
        if target.tls {
            let session = try AdminTLSSession(fd: fd, host: target.host, caFile: settings.caFile, url: url)
            stream = .tls(session)
        }
        let hostHeader = target.host.contains(":") ? "[\(target.host)]" : target.host
        var request = "\(method) \(path) HTTP/1.1\r\nHost: \(hostHeader):\(target.port)\r\nConnection: close\r\n"
        if let token = settings.token, !token.isEmpty { request += "Authorization: Bearer \(token)\r\n" }
        if let body {
            request += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n"
        }
        request += "\r\n"
        try send(stream, Array(request.utf8) + (body ?? []), url: url)
        let bytes = try receive(stream, url: url)
        guard let response = parseResponse(bytes)?.response else {
            throw PulseError.startup("\(url) did not answer HTTP (\(bytes.count) bytes)")
        }
        return response
    }

    /// The connection a request travels on.
    private enum Stream {
        case plain(Int32)
        case tls(AdminTLSSession)

        /// send(2)/recv(2) semantics: bytes moved, 0 at the end, -1 with errno.
        func write(_ bytes: UnsafeRawBufferPointer) -> Int {
            switch self {
            case .plain(let fd): return Glibc.send(fd, bytes.baseAddress!, bytes.count, Int32(MSG_NOSIGNAL))
            case .tls(let session): return session.write(bytes)
            }
        }

        func read(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
            switch self {
            case .plain(let fd): return recv(fd, buffer.baseAddress!, buffer.count, 0)
            case .tls(let session): return session.read(buffer)
            }
        }
    }

    private static func connect(host: String, port: Int, timeoutMs: Int) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            throw PulseError.startup("cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(list) }
        var timeout = timeval(tv_sec: timeoutMs / 1000, tv_usec: (timeoutMs % 1000) * 1000)
        var failure = "no address"
        var next: UnsafeMutablePointer<addrinfo>? = first
        while let info = next {
            next = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { continue }
            // On Linux, SO_SNDTIMEO bounds connect(2) too.
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            if Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 { return fd }
            failure = String(cString: strerror(errno))
            close(fd)
        }
        throw PulseError.startup("cannot connect to \(host):\(port): \(failure)")
    }

    private static func send(_ stream: Stream, _ bytes: [UInt8], url: String) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { stream.write(UnsafeRawBufferPointer(rebasing: $0[offset...])) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw PulseError.startup("\(url): send failed: \(String(cString: strerror(errno)))") }
            offset += n
        }
    }

    /// Reads until the peer closes (we asked for `Connection: close`), the
    /// response is complete by its `Content-Length`, or the size limit.
    private static func receive(_ stream: Stream, url: String) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while bytes.count <= maxResponseBytes {
            let n = chunk.withUnsafeMutableBytes { stream.read($0) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 {
                let timedOut = errno == EAGAIN || errno == EWOULDBLOCK
                throw PulseError.startup(
                    "\(url): \(timedOut ? "no answer in time" : "receive failed: \(String(cString: strerror(errno)))")")
            }
            if n == 0 { break }
            bytes += chunk[0..<n]
            if let response = parseResponse(bytes), response.complete { break }
        }
        guard bytes.count <= maxResponseBytes else {
            throw PulseError.startup("\(url): answer larger than \(maxResponseBytes) bytes")
        }
        return bytes
    }

    /// The status and body of a response and whether its `Content-Length`
    /// is all there, or nil when `bytes` is not (yet) an HTTP response head.
    private static func parseResponse(_ bytes: [UInt8]) -> (response: Response, complete: Bool)? {
        let separator: [UInt8] = [13, 10, 13, 10]
        guard bytes.count >= 4,
            let end = (0...(bytes.count - 4)).first(where: { Array(bytes[$0..<($0 + 4)]) == separator })
        else { return nil }
        let head = String(decoding: bytes[0..<end], as: UTF8.self)
        let lines = head.components(separatedBy: "\r\n")
        let statusParts = lines[0].split(separator: " ")
        guard statusParts.count >= 2, statusParts[0].hasPrefix("HTTP/1."), let status = Int(statusParts[1]) else {
            return nil
        }
        var length: Int?
        for line in lines.dropFirst() {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "content-length" {
                length = Int(parts[1].trimmingCharacters(in: .whitespaces))
            }
        }
        var body = Array(bytes[(end + 4)...])
        var complete = false
        if let length, length >= 0, body.count >= length {
            body = Array(body.prefix(length))
            complete = true
        }
        return (Response(status: status, body: body), complete)
    }
}
