// Admin: the admin API is not a browser's to use (issue 20, item 4). A web page
// in any tab can make a browser send requests to 127.0.0.1:8080; two ways are
// closed here, before routing, for every request (the live page's included):
//
// - DNS rebinding: a page on evil.example whose name is re-pointed at
//   127.0.0.1 is "same origin" with itself, so the browser lets it read and
//   write freely — but every request it sends says `Host: evil.example`. A
//   request whose `Host` is not one of this node's own names is refused.
// - Cross-site requests: a form or `fetch` from another origin may send a
//   `text/plain` (or form) POST without a CORS preflight. A state-changing
//   request (any method but GET and HEAD) is refused when its `Origin` is not
//   this server's, or when it carries a body that is not `application/json`
//   (JSON needs a preflight, which this server never grants).
//
// The node's own names, decided here (docs/security.md, "Admin API and browsers"):
// - every IP literal (IPv4 dotted quad, bracketed IPv6): a browser sends one
//   only for a URL naming that address, which no page can re-point, so they
//   carry no rebinding risk, whatever the bind address (0.0.0.0 included) or
//   the port mapping (Docker's `8081:8080`, a NAT);
// - `localhost`, the machine's host name (full and first label: compose's
//   `hostname: pulse1`, what Prometheus scrapes), and each `-admin-hosts` name
//   (a DNS name or a proxy's name the API is reached by).
// The port of `Host` is not compared: the name is what a rebinding page
// controls, and a published or proxied port differs from the bound one.
// A request without `Host` (HTTP/1.0 tools) is not a browser's and passes.
// Refusals are 403 with a machine code, counted in
// `backbeat_rejected_input_total{surface="http",reason=<code>}`.
import Foundation
import Glibc

/// The names a `Host` header may give for this node (lower case, no port,
/// no trailing dot), besides IP literals, which are always accepted.
struct AdminHostNames: Equatable {
    let names: Set<String>

    /// `configured`: `-admin-hosts`; `hostname`: the machine's (nil: ask the system).
    init(configured: [String], hostname: String? = nil) {
        var names: Set<String> = ["localhost"]
        let host = hostname ?? Self.systemHostname()
        if let host = host.flatMap(Self.normalized) {
            names.insert(host)
            if let first = host.split(separator: ".").first { names.insert(String(first)) }
        }
        for name in configured { if let name = Self.normalized(name) { names.insert(name) } }
        self.names = names
    }

    /// Whether `value` (a `Host` header) names this node.
    func accepts(host value: [UInt8]) -> Bool {
        guard let (host, _) = Self.split(authority: value) else { return false }
        if host.hasPrefix("[") { return true }  // a valid bracketed IPv6 literal (`split` checked it)
        var probe = in_addr()
        if inet_pton(AF_INET, host, &probe) == 1 { return true }
        return names.contains(host)
    }

    /// `host[:port]` → (lower-cased host without a trailing dot, port or nil);
    /// nil when it is not a well-formed authority. A bracketed host must be
    /// a valid IPv6 literal; a port is 1 to 5 digits.
    static func split(authority value: [UInt8]) -> (host: String, port: String?)? {
        guard !value.isEmpty, value.count <= 255,
            value.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: ",") && $0 != UInt8(ascii: "/") })
        else { return nil }
        let text = String(decoding: value, as: UTF8.self).lowercased()
        var host = Substring(text)
        var port: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            let literal = String(text[text.index(after: text.startIndex)..<close])
            var probe = in6_addr()
            guard inet_pton(AF_INET6, literal, &probe) == 1 else { return nil }
            host = text[...close]
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.first == ":" else { return nil }
                port = rest.dropFirst()
            }
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            port = text[text.index(after: colon)...]
        }
        if let port, !(1...5).contains(port.count) || !port.allSatisfy({ $0.isASCII && $0.isNumber }) { return nil }
        if host.hasSuffix(".") { host = host.dropLast() }
        let bracketed = host.hasPrefix("[")
        guard !host.isEmpty, bracketed || !host.contains(where: { $0 == ":" || $0 == "[" || $0 == "]" }) else {
            return nil
        }
        return (String(host), port.map(String.init))
    }

    /// A configured or system name as `accepts` compares it, or nil when empty.
    static func normalized(_ name: String) -> String? {
        var lowered = Substring(name.lowercased())
        if lowered.hasSuffix(".") { lowered = lowered.dropLast() }
        return lowered.isEmpty ? nil : String(lowered)
    }

    private static func systemHostname() -> String? {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// The checks of this file's header, as a pure function of a request.
enum AdminBrowserGuard {
    /// Why a request is refused: 403, `code` (also the counter's reason) and one line.
    struct Refusal: Equatable {
        var code: String
        var message: String
    }

    static func check(_ request: AdminRequest, hosts: AdminHostNames) -> Refusal? {
        if let host = request.host, !hosts.accepts(host: host) {
            return Refusal(
                code: "foreign_host",
                message: "Host '\(printable(host))' is not a name of this node (add it with -admin-hosts)")
        }
        let safe = request.isHead || request.method == AdminRequest.getMethod
        guard !safe else { return nil }
        if let origin = request.origin, !sameOrigin(origin, host: request.host) {
            return Refusal(
                code: "foreign_origin",
                message:
                    "Origin '\(printable(origin))' is not this server: state-changing requests come from its own page")
        }
        if let type = request.contentType {
            guard mediaType(type) == "application/json" else {
                return Refusal(
                    code: "unsupported_content_type",
                    message: "Content-Type '\(printable(type))' is not application/json")
            }
        } else if !request.body.isEmpty {
            return Refusal(
                code: "unsupported_content_type", message: "a request body needs Content-Type: application/json")
        }
        return nil
    }

    /// `Origin` names the server the request was sent to: `http(s)://` and
    /// the same authority as `Host` (a default port written or not). `null`,
    /// a malformed origin or a missing `Host` are not the same origin.
    static func sameOrigin(_ origin: [UInt8], host: [UInt8]?) -> Bool {
        guard let host, let target = AdminHostNames.split(authority: host) else { return false }
        let text = String(decoding: origin, as: UTF8.self).lowercased()
        let scheme: String
        if text.hasPrefix("http://") {
            scheme = "http"
        } else if text.hasPrefix("https://") {
            scheme = "https"
        } else {
            return false
        }
        let authority = text.dropFirst(scheme.count + 3)
        guard let given = AdminHostNames.split(authority: Array(authority.utf8)) else { return false }
        let defaultPort = scheme == "http" ? "80" : "443"
        return given.host == target.host && (given.port ?? defaultPort) == (target.port ?? defaultPort)
    }

    /// The media type of a `Content-Type` value: before any `;`, trimmed, lower case.
    static func mediaType(_ value: [UInt8]) -> String {
        let type = value.split(separator: UInt8(ascii: ";"), maxSplits: 1, omittingEmptySubsequences: false).first ?? []
        return String(decoding: type, as: UTF8.self).trimmingCharacters(in: .whitespaces).lowercased()
    }

    /// A header value for a one-line message: printable ASCII, at most 100 bytes.
    private static func printable(_ value: [UInt8]) -> String {
        let kept = value.prefix(100).map { $0 >= 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "'") ? $0 : UInt8(ascii: "?") }
        return String(decoding: kept, as: UTF8.self) + (value.count > 100 ? "…" : "")
    }
}
