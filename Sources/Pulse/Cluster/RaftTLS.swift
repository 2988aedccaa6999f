// Cluster: mutual TLS 1.3 for the Raft transport (OpenSSL 3, COpenSSL).
//
// Owns the TLS context built from -raft-tls-cert/-raft-tls-key/-raft-tls-ca,
// its reload on SIGHUP, the per-connection sessions driven non-blockingly by
// the transport on the loop, and the rule that binds a certificate to a
// `-peers` entry (`PeerIdentity`).
//
// Guarantees:
// - Only TLS 1.3, both sides present a certificate, and it must chain to the
//   CA file (`SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT`); no session
//   tickets or resumption (every connection is verified in full).
// - A certificate identifies exactly one other member of `-peers`
//   (`PeerIdentity.match`), else the connection is refused; every frame on an
//   inbound connection must then come `from` that member (the transport
//   checks it), so a member's certificate cannot speak for another member.
// - A reload builds a whole new context and swaps it in only if it loads and
//   still names this node; established connections keep the context they
//   were made with (OpenSSL counts references), new ones use the new one.
//   A failed reload keeps the old context and logs one line; it never exits.
import COpenSSL
import Foundation
import Glibc

/// How a certificate names a member of the cluster (documented in
/// docs/security.md): a `DNS:` subjectAltName equal to the member's id (the
/// `id@` part of its `-peers` entry), or an `IP:` subjectAltName equal to its
/// host when no other member shares that host.
enum PeerIdentity {
    /// What a certificate's names say about who it belongs to.
    enum Match: Equatable {
        case peer(Peer)
        /// It names no member of `-peers`.
        case none
        /// It names more than one member: refused, it could speak for each.
        case ambiguous
    }

    /// The member of `peers` that `names` (lines "DNS:x", "IP:a.b.c.d",
    /// "URI:u", as `copenssl_cert_names` writes them) identify. Pure.
    static func match(names: [String], peers: [Peer]) -> Match {
        var found: [Peer] = []
        for peer in peers {
            let sameHost = peers.filter { $0.host == peer.host }.count
            let byId = peer.hasId && names.contains("DNS:\(peer.name)")
            let byHost = sameHost == 1 && names.contains(peer.isNumeric ? "IP:\(peer.host)" : "DNS:\(peer.host)")
            if byId || byHost { found.append(peer) }
        }
        switch found.count {
        case 0: return .none
        case 1: return .peer(found[0])
        default: return .ambiguous
        }
    }

    /// Splits the text `copenssl_cert_names` wrote into names.
    static func names(_ text: String) -> [String] {
        text.split(separator: "\n").map(String.init)
    }
}

/// The TLS context of the Raft transport: certificate, key and CA, reloadable.
final class RaftTLS {
    let certPath: String
    let keyPath: String
    let caPath: String
    /// The member of the cluster this node's certificate must name.
    private let me: Peer
    private let peers: [Peer]
    private var context: OpaquePointer
    /// The names in this node's current certificate (for logs).
    private(set) var ownNames: [String] = []
    /// Successful reloads (for tests and logs).
    private(set) var reloads: UInt64 = 0

    /// Loads the files; a problem is one line (`PulseError.startup`).
    init(certPath: String, keyPath: String, caPath: String, peers: PeerList) throws {
        self.certPath = certPath
        self.keyPath = keyPath
        self.caPath = caPath
        self.me = peers.me
        self.peers = peers.peers
        (context, ownNames) = try Self.load(
            certPath: certPath, keyPath: keyPath, caPath: caPath, me: peers.me, peers: peers.peers)
    }

    deinit { SSL_CTX_free(context) }

    /// Re-reads the three files (SIGHUP). On success new connections use the
    /// new certificate; on failure the old one stays and the error is returned.
    func reload() throws {
        install(try loader.load())
    }

    /// What a reload reads, as a value a helper thread can run (`load`): the
    /// SIGHUP handler reads and parses the files off the loop thread and
    /// installs the result on it (`install`).
    var loader: Loader { Loader(certPath: certPath, keyPath: keyPath, caPath: caPath, me: me, peers: peers) }

    /// The paths and members a reload needs; `load` runs on any thread.
    struct Loader: Sendable {
        let certPath: String
        let keyPath: String
        let caPath: String
        let me: Peer
        let peers: [Peer]

        func load() throws -> Loaded {
            let (context, names) = try RaftTLS.load(
                certPath: certPath, keyPath: keyPath, caPath: caPath, me: me, peers: peers)
            return Loaded(context: context, names: names)
        }
    }

    /// A context `Loader.load` made, owned by whoever holds it until
    /// `install` takes it (it is handed from the helper thread to the loop
    /// thread once, never shared: hence unchecked).
    struct Loaded: @unchecked Sendable {
        let context: OpaquePointer
        let names: [String]
        /// Frees a context that will not be installed.
        func discard() { SSL_CTX_free(context) }
    }

    /// Installs a loaded context (loop thread): new connections use it.
    func install(_ fresh: Loaded) {
        SSL_CTX_free(context)  // sessions made from it hold their own reference
        context = fresh.context
        ownNames = fresh.names
        reloads &+= 1
    }

    /// A session on the connected, non-blocking socket `fd` (not owned), as
    /// the accepting (`server`) or connecting side; nil if OpenSSL fails.
    func session(fd: Int32, server: Bool) -> TLSSession? {
        guard let ssl = SSL_new(context) else { return nil }
        guard SSL_set_fd(ssl, fd) == 1 else {
            SSL_free(ssl)
            return nil
        }
        if server { SSL_set_accept_state(ssl) } else { SSL_set_connect_state(ssl) }
        return TLSSession(ssl: ssl)
    }

    private static func load(
        certPath: String, keyPath: String, caPath: String, me: Peer, peers: [Peer]
    ) throws -> (OpaquePointer, [String]) {
        copenssl_clear_errors()
        guard let ctx = copenssl_ctx_new() else { throw PulseError.startup("raft TLS: \(lastError())") }
        func fail(_ what: String) -> PulseError {
            let reason = lastError()
            SSL_CTX_free(ctx)
            return PulseError.startup("\(what)\(reason.isEmpty ? "" : ": \(reason)")")
        }
        guard SSL_CTX_use_certificate_chain_file(ctx, certPath) == 1 else {
            throw fail("-raft-tls-cert \(certPath) cannot be used")
        }
        guard SSL_CTX_use_PrivateKey_file(ctx, keyPath, SSL_FILETYPE_PEM) == 1 else {
            throw fail("-raft-tls-key \(keyPath) cannot be used")
        }
        guard SSL_CTX_check_private_key(ctx) == 1 else {
            throw fail("-raft-tls-key \(keyPath) does not match -raft-tls-cert \(certPath)")
        }
        guard SSL_CTX_load_verify_locations(ctx, caPath, nil) == 1 else {
            throw fail("-raft-tls-ca \(caPath) cannot be used")
        }
        var buffer = [CChar](repeating: 0, count: 4096)
        _ = copenssl_own_names(ctx, &buffer, buffer.count)
        let names = PeerIdentity.names(String(cString: buffer))
        // Peers would refuse a certificate that does not name this node: say so now.
        guard PeerIdentity.match(names: names, peers: peers) == .peer(me) else {
            SSL_CTX_free(ctx)
            throw PulseError.startup(
                "-raft-tls-cert \(certPath) names \(names.isEmpty ? "nothing" : names.joined(separator: ",")), not this node (\(me.hasId ? "DNS:\(me.name)" : "IP:\(me.host)"), once among -peers)"
            )
        }
        return (ctx, names)
    }

    static func lastError() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        copenssl_last_error(&buffer, buffer.count)
        return String(cString: buffer)
    }
}

/// One TLS connection, driven on the loop without blocking: every call
/// returns at once, saying which socket readiness it waits for.
final class TLSSession {
    /// The outcome of one non-blocking step.
    enum Step: Equatable {
        /// `n` bytes read or written (the handshake: done).
        case done(Int)
        case wantRead
        case wantWrite
        /// The peer closed the connection.
        case closed
        /// A protocol, certificate or socket error: close the connection.
        case failed(String)
    }

    private let ssl: OpaquePointer
    private(set) var established = false

    fileprivate init(ssl: OpaquePointer) { self.ssl = ssl }

    deinit { SSL_free(ssl) }

    /// Advances the handshake.
    func handshake() -> Step {
        copenssl_clear_errors()
        let rc = SSL_do_handshake(ssl)
        if rc == 1 {
            established = true
            return .done(0)
        }
        return step(rc)
    }

    /// Reads decrypted bytes into `buffer`.
    func read(into buffer: UnsafeMutableRawBufferPointer) -> Step {
        copenssl_clear_errors()
        let rc = SSL_read(ssl, buffer.baseAddress, Int32(clamping: buffer.count))
        return rc > 0 ? .done(Int(rc)) : step(rc)
    }

    /// Writes (part of) `bytes`; partial writes are enabled.
    func write(_ bytes: UnsafeRawBufferPointer) -> Step {
        guard !bytes.isEmpty else { return .done(0) }
        copenssl_clear_errors()
        let rc = SSL_write(ssl, bytes.baseAddress, Int32(clamping: bytes.count))
        return rc > 0 ? .done(Int(rc)) : step(rc)
    }

    /// Whether the peer's certificate chained to the CA (valid after a handshake attempt).
    var peerVerified: Bool { SSL_get_verify_result(ssl) == X509_V_OK }

    /// The peer certificate's verification error as text.
    var verifyError: String { String(cString: X509_verify_cert_error_string(SSL_get_verify_result(ssl))) }

    /// The subjectAltNames of the certificate the peer presented.
    var peerNames: [String] {
        var buffer = [CChar](repeating: 0, count: 4096)
        _ = copenssl_peer_names(ssl, &buffer, buffer.count)
        return PeerIdentity.names(String(cString: buffer))
    }

    private func step(_ rc: Int32) -> Step {
        let code = SSL_get_error(ssl, rc)
        switch code {
        case SSL_ERROR_WANT_READ: return .wantRead
        case SSL_ERROR_WANT_WRITE: return .wantWrite
        case SSL_ERROR_ZERO_RETURN: return .closed
        case SSL_ERROR_SYSCALL:
            let error = errno
            let detail = RaftTLS.lastError()
            if !detail.isEmpty { return .failed(detail) }
            return error == 0 ? .closed : .failed(String(cString: strerror(error)))
        default:
            let detail = RaftTLS.lastError()
            return .failed(detail.isEmpty ? "TLS error \(code)" : detail)
        }
    }
}
