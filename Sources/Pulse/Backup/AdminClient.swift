// Backup/AdminClient.swift — owns the command line's side of the admin API:
// one blocking HTTP/1.1 request (`Connection: close`) to a node, bounded in
// time (connect, send and receive timeouts) and in size. Used by `pulse
// backup`, a short-lived command, never by a node's loop.
import Foundation
import Glibc

/// A blocking HTTP/1.1 client for one request at a time.
enum AdminClient {
    struct Response {
        var status: Int
        var body: [UInt8]
        /// The body as text, for error messages.
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// Largest response read (a backup is a few hundred bytes).
    static let maxResponseBytes = 1 << 20

    /// The comma-separated `--admin` list, each URL checked (`parseURL`);
    /// a one-line error when it names none or one is not usable.
    static func urls(_ list: String) throws -> [String] {
        let urls = list.split(separator: ",").map(String.init).filter { !$0.isEmpty }
        guard !urls.isEmpty else { throw PulseError.config("--admin needs at least one URL") }
        for url in urls { _ = try parseURL(url) }
        return urls
    }

    /// `http://host:port` or `host:port` (an optional trailing `/`) into host and port.
    static func parseURL(_ url: String) throws -> (host: String, port: Int) {
        var rest = Substring(url.trimmingCharacters(in: .whitespaces))
        if rest.hasPrefix("https://") {
            throw PulseError.config("\(url): the admin API speaks plain HTTP (use http://)")
        }
        if rest.hasPrefix("http://") { rest = rest.dropFirst("http://".count) }
        while rest.hasSuffix("/") { rest = rest.dropLast() }
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]),
            (1...65535).contains(port), colon > rest.startIndex
        else {
            throw PulseError.config("\(url) is not http://host:port")
        }
        var host = String(rest[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host, port)
    }

    /// GETs `path` from `url` with an optional bearer token. Throws
    /// `PulseError.startup` when the node cannot be reached or answers
    /// something that is not HTTP.
    static func get(url: String, path: String, token: String?, timeoutMs: Int) throws -> Response {
        try request("GET", url: url, path: path, body: nil, token: token, timeoutMs: timeoutMs)
    }

    /// POSTs a JSON `body` to `path` (`pulse members add`, leader transfer).
    static func post(url: String, path: String, body: [UInt8], token: String?, timeoutMs: Int) throws -> Response {
        try request("POST", url: url, path: path, body: body, token: token, timeoutMs: timeoutMs)
    }

    /// DELETEs `path` (`pulse members remove`).
    static func delete(url: String, path: String, token: String?, timeoutMs: Int) throws -> Response {
        try request("DELETE", url: url, path: path, body: nil, token: token, timeoutMs: timeoutMs)
    }

    /// One request (`method` and `path` are the caller's constants and
    /// percent-encoded names: no CR/LF), `Connection: close`.
    private static func request(
        _ method: String, url: String, path: String, body: [UInt8]?, token: String?, timeoutMs: Int
    ) throws -> Response {
        let (host, port) = try parseURL(url)
        let fd = try connect(host: host, port: port, timeoutMs: timeoutMs)
        defer { close(fd) }
        var request = "\(method) \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nConnection: close\r\n"
        if let token, !token.isEmpty { request += "Authorization: Bearer \(token)\r\n" }
        if let body {
            request += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n"
        }
        request += "\r\n"
        try send(fd, Array(request.utf8) + (body ?? []), url: url)
        let bytes = try receive(fd, url: url)
        guard let response = parseResponse(bytes)?.response else {
            throw PulseError.startup("\(url) did not answer HTTP (\(bytes.count) bytes)")
        }
        return response
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

    private static func send(_ fd: Int32, _ bytes: [UInt8], url: String) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL))
            }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw PulseError.startup("\(url): send failed: \(String(cString: strerror(errno)))") }
            offset += n
        }
    }

    /// Reads until the peer closes (we asked for `Connection: close`), the
    /// response is complete by its `Content-Length`, or the size limit.
    private static func receive(_ fd: Int32, url: String) throws -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while bytes.count <= maxResponseBytes {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
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
