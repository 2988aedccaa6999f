// Admin/AdminTLS.swift — owns the TLS client side of `pulse backup` and
// `pulse members` for `https://` admin URLs (a TLS-terminating proxy in
// front of a node's admin API; docs/operations.md#admin-api-over-https).
//
// Guarantees: TLS 1.2 or newer (OpenSSL's defaults otherwise); the server's
// certificate must chain to `--ca` (or, without it, to the system's trust
// store) and name the URL's host (a DNS subjectAltName, or an IP one for a
// numeric host); SNI carries a DNS host. A failure is one line naming the
// URL and OpenSSL's reason. Blocking, on a socket whose send and receive
// timeouts the caller set.
import COpenSSL
import Foundation
import Glibc

/// One TLS client session over a connected, blocking socket.
final class AdminTLSSession {
    private let context: OpaquePointer
    private let ssl: OpaquePointer

    /// Handshakes on `fd` (not owned: the caller closes it) or throws
    /// `PulseError.startup` (untrusted certificate, wrong name, no TLS) or
    /// `PulseError.config` (an unreadable `--ca`).
    init(fd: Int32, host: String, caFile: String, url: String) throws {
        // A short-lived command: a peer that closes mid-write must not kill it.
        signal(SIGPIPE, SIG_IGN)
        guard let context = SSL_CTX_new(TLS_client_method()) else {
            throw PulseError.startup("\(url): cannot create a TLS context: \(Self.lastError())")
        }
        // 0x0303: TLS 1.2 (SSL_CTX_set_min_proto_version is a macro).
        _ = SSL_CTX_ctrl(context, SSL_CTRL_SET_MIN_PROTO_VERSION, 0x0303, nil)
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
        let trusted =
            caFile.isEmpty
            ? SSL_CTX_set_default_verify_paths(context) : SSL_CTX_load_verify_locations(context, caFile, nil)
        guard trusted == 1 else {
            let reason = Self.lastError()
            SSL_CTX_free(context)
            throw PulseError.config("--ca \(caFile): not a readable PEM certificate file (\(reason))")
        }
        guard let ssl = SSL_new(context) else {
            SSL_CTX_free(context)
            throw PulseError.startup("\(url): cannot create a TLS session: \(Self.lastError())")
        }
        self.context = context
        self.ssl = ssl
        guard SSL_set_fd(ssl, fd) == 1 else {
            throw PulseError.startup("\(url): cannot attach TLS to the socket: \(Self.lastError())")
        }
        if Self.isNumeric(host) {
            guard X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1 else {
                throw PulseError.startup("\(url): bad address \(host)")
            }
        } else {
            // SSL_set_tlsext_host_name is a macro over SSL_ctrl.
            _ = host.withCString {
                SSL_ctrl(
                    ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, Int(TLSEXT_NAMETYPE_host_name),
                    UnsafeMutableRawPointer(mutating: $0))
            }
            guard SSL_set1_host(ssl, host) == 1 else { throw PulseError.startup("\(url): bad host name \(host)") }
        }
        if SSL_connect(ssl) != 1 {
            let verify = SSL_get_verify_result(ssl)
            let reason =
                verify != X509_V_OK
                ? "certificate not trusted: \(String(cString: X509_verify_cert_error_string(verify)))"
                    + (caFile.isEmpty ? " (give --ca with the CA that signed it)" : "")
                : "TLS handshake failed: \(Self.lastError())"
            throw PulseError.startup("\(url): \(reason)")
        }
    }

    deinit {
        SSL_free(ssl)
        SSL_CTX_free(context)
    }

    /// send(2) semantics: bytes written, or -1 with errno set.
    func write(_ bytes: UnsafeRawBufferPointer) -> Int {
        let n = SSL_write(ssl, bytes.baseAddress, Int32(clamping: bytes.count))
        if n > 0 { return Int(n) }
        if errno == 0 { errno = EPIPE }
        copenssl_clear_errors()
        return -1
    }

    /// recv(2) semantics: bytes read, 0 when the server closed (with or
    /// without close_notify), or -1 with errno set (EAGAIN: timed out).
    func read(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
        errno = 0
        let n = SSL_read(ssl, buffer.baseAddress, Int32(clamping: buffer.count))
        if n > 0 { return Int(n) }
        let code = SSL_get_error(ssl, n)
        copenssl_clear_errors()
        switch code {
        case SSL_ERROR_ZERO_RETURN: return 0
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            errno = EAGAIN
            return -1
        case SSL_ERROR_SYSCALL:
            if errno == 0 { return 0 }  // closed without close_notify
            return -1
        default:
            errno = EPROTO
            return -1
        }
    }

    private static func isNumeric(_ host: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    private static func lastError() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        copenssl_last_error(&buffer, buffer.count)
        return buffer[0] == 0 ? "unknown" : String(cString: buffer)
    }
}
