// KV/KVServerInfo.swift — the version each NATS server announces, read at
// start-up in nats-kv mode with `-kv-replicas` > 1 (issue 21; the rule and
// its reasons: PulsePolicy/KVLeaseServerVersion.swift). libnats 3.4 keeps
// the server's INFO to itself, so this opens a plain TCP connection to each
// server of -nats (and to the cluster peers their INFO lists), reads the
// INFO line a NATS server sends first (before TLS and before any
// credentials), and closes. Blocking, bounded: one connect and one read of
// at most `maxInfoBytes`, each within the timeout, for at most `maxServers`.
import CLoop
import Foundation
import Glibc
import PulsePolicy

enum KVServerInfo {
    /// Servers read at most (the -nats list and the peers their INFO lists).
    static let maxServers = 16
    /// The longest INFO line read.
    static let maxInfoBytes = 64 * 1024

    /// The start-up refusal for `replicas` replicas on the servers of
    /// `servers` that answer, or nil; `checked` is how many answered.
    static func refusal(servers: [String], replicas: Int, timeoutMs: Int) -> (refusal: String?, checked: Int) {
        var queue = servers.compactMap(hostPort)
        var seen = Set<String>()
        var checked = 0
        while !queue.isEmpty, seen.count < maxServers {
            let (host, port) = queue.removeFirst()
            guard seen.insert("\(host):\(port)").inserted else { continue }
            guard let line = infoLine(host: host, port: port, timeoutMs: timeoutMs),
                let info = NatsServerVersion.info(line: line)
            else { continue }
            checked += 1
            if let refusal = NatsServerVersion.refusal(
                version: info.version, server: "\(host):\(port)", replicas: replicas)
            {
                return (refusal, checked)
            }
            queue += info.connectURLs.compactMap(hostPort)
        }
        return (nil, checked)
    }

    /// Host and port of `nats://[user:pass@]host[:port]` (also tls://, or no scheme).
    static func hostPort(_ url: String) -> (String, Int)? {
        var rest = Substring(url)
        if let scheme = rest.range(of: "://") { rest = rest[scheme.upperBound...] }
        if let at = rest.lastIndex(of: "@") { rest = rest[rest.index(after: at)...] }
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        var host = rest
        var port = 4222
        if rest.first == "[", let close = rest.firstIndex(of: "]") {  // [v6]:port
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if after.first == ":" { port = Int(after.dropFirst()) ?? -1 }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            port = Int(rest[rest.index(after: colon)...]) ?? -1
        }
        guard !host.isEmpty, (1...65535).contains(port) else { return nil }
        return (String(host), port)
    }

    /// The first line the server at `host:port` sends, or nil.
    private static func infoLine(host: String, port: Int, timeoutMs: Int) -> String? {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let list else { return nil }
        defer { freeaddrinfo(list) }
        var node: UnsafeMutablePointer<addrinfo>? = list
        while let ai = node {
            node = ai.pointee.ai_next
            let fd = socket(ai.pointee.ai_family, ai.pointee.ai_socktype, ai.pointee.ai_protocol)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var tv = timeval(tv_sec: timeoutMs / 1000, tv_usec: (timeoutMs % 1000) * 1000)
            // SO_SNDTIMEO bounds connect(2) on Linux; SO_RCVTIMEO the reads.
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            guard connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 else { continue }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            let deadline = cloop_monotonic_ns() + Int64(timeoutMs) * 1_000_000
            while bytes.count < maxInfoBytes, cloop_monotonic_ns() < deadline {
                let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                guard n > 0 else { break }
                bytes += chunk[0..<n]
                if let end = bytes.firstIndex(of: UInt8(ascii: "\n")) {
                    return String(decoding: bytes[..<end], as: UTF8.self)
                        .trimmingCharacters(in: .whitespacesAndNewlines)
                }
            }
        }
        return nil
    }
}
