// Wire/PublicationSignature.swift — owns the layout of a signed publication
// (issue 20: `-sign-key`) and its check: the Ed25519 keys' file formats, the
// key id, and `PublicationVerifier`, which consumers (BackbeatClient, tests)
// use. The node's signer (allocation-free, libsodium) is in Pulse.
//
// A signed publication is a JSON object whose last two members are
// `"kid":"<16 hex>"` and `"sig":"<128 hex>"`, written compactly:
//
//     P = U ,"kid":"<kid>","sig":"<sig>"}       (U: the object without its `}`)
//     S = U ,"kid":"<kid>"}                      (the signed message: P without the sig member)
//
// `sig` is Ed25519 (RFC 8032, pure) over the bytes of S; `kid` the first 8
// bytes of SHA-256 of the signer's 32-byte public key, lowercase hex. So a
// consumer in any language checks the last 163 bytes of P against that
// pattern, builds S by cutting the 139 bytes `","sig":"…"}` and appending
// `"}`, looks `kid` up among its keys and verifies. docs/protocol.md.
import Crypto
import Foundation

/// The signed-publication layout and the Ed25519 key files.
public enum PublicationSignature {
    /// Hex digits of a key id (8 bytes of SHA-256 of the public key).
    public static let keyIdHexLength = 16
    /// Hex digits of an Ed25519 signature (64 bytes).
    public static let signatureHexLength = 128
    /// `,"kid":"` — opens the key-id member.
    public static let kidOpen: [UInt8] = Array(#","kid":""#.utf8)
    /// `","sig":"` — closes the key id and opens the signature member.
    public static let sigOpen: [UInt8] = Array(#"","sig":""#.utf8)
    /// Bytes after the key id's last digit: `","sig":"<128 hex>"}`.
    public static let sigTrailerBytes = sigOpen.count + signatureHexLength + 2
    /// Bytes from `,"kid":"` to the end of a signed publication.
    public static let trailerBytes = kidOpen.count + keyIdHexLength + sigTrailerBytes
    /// Bytes signing adds to an unsigned object (its `}` is reused).
    public static let overheadBytes = trailerBytes - 1

    /// The DER prefix of an Ed25519 private key (PKCS #8 v1, RFC 8410) before its 32-byte seed.
    static let privateKeyDERPrefix: [UInt8] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ]
    /// The DER prefix of an Ed25519 public key (SubjectPublicKeyInfo, RFC 8410) before its 32 bytes.
    static let publicKeyDERPrefix: [UInt8] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00]

    /// The key id of a raw 32-byte Ed25519 public key.
    public static func keyId(publicKey: some DataProtocol) -> String {
        hex(SHA256.hash(data: Array(publicKey)).prefix(8))
    }

    /// The 32-byte seed of a PEM Ed25519 private key (`openssl genpkey -algorithm ed25519`).
    public static func privateSeed(pem: String) throws(KeyFileError) -> [UInt8] {
        try pemBody(pem, label: "PRIVATE KEY", prefix: privateKeyDERPrefix)
    }

    /// The raw 32 bytes of a PEM Ed25519 public key (`openssl pkey -pubout`).
    public static func publicKey(pem: String) throws(KeyFileError) -> [UInt8] {
        try pemBody(pem, label: "PUBLIC KEY", prefix: publicKeyDERPrefix)
    }

    /// The 32 key bytes of a one-block PEM whose DER is `prefix` + 32 bytes.
    private static func pemBody(_ pem: String, label: String, prefix: [UInt8]) throws(KeyFileError) -> [UInt8] {
        let lines = pem.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        guard let begin = lines.firstIndex(of: "-----BEGIN \(label)-----"),
            let end = lines.firstIndex(of: "-----END \(label)-----"), begin < end
        else {
            throw KeyFileError("not a PEM \(label.lowercased()) (-----BEGIN \(label)----- … -----END \(label)-----)")
        }
        guard let der = Data(base64Encoded: lines[(begin + 1)..<end].joined()) else {
            throw KeyFileError("the PEM \(label.lowercased()) is not valid base64")
        }
        guard der.count == prefix.count + 32, der.prefix(prefix.count).elementsEqual(prefix) else {
            throw KeyFileError(
                "not an Ed25519 \(label.lowercased()) (RFC 8410; make one with openssl genpkey -algorithm ed25519)")
        }
        return Array(der.suffix(32))
    }

    /// Lowercase hex of `bytes`.
    public static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xf)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// A key file that cannot be used, with the reason.
public struct KeyFileError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Checks signed publications against a set of the cluster's public keys
/// (several during a rotation: old and new both accepted). Immutable, so
/// safe to share across threads.
public struct PublicationVerifier: Sendable {
    /// Why a publication is refused: no signature trailer, a key id not in
    /// the set, or a signature that does not verify.
    public enum Refusal: String, Sendable {
        case unsigned
        case unknownKey = "unknown_key"
        case badSignature = "bad_signature"
    }

    /// Raw 32-byte public keys by key id (the key type of swift-crypto is not Sendable).
    private let keys: [String: [UInt8]]
    /// The key ids accepted, sorted.
    public var keyIds: [String] { keys.keys.sorted() }

    /// `publicKeys`: raw 32-byte Ed25519 public keys.
    public init(publicKeys: [[UInt8]]) throws(KeyFileError) {
        var keys: [String: [UInt8]] = [:]
        for raw in publicKeys {
            guard (try? Curve25519.Signing.PublicKey(rawRepresentation: raw)) != nil else {
                throw KeyFileError("an Ed25519 public key is 32 bytes (got \(raw.count))")
            }
            keys[PublicationSignature.keyId(publicKey: raw)] = raw
        }
        guard !keys.isEmpty else { throw KeyFileError("no public key given") }
        self.keys = keys
    }

    /// `pems`: PEM Ed25519 public keys (`openssl pkey -pubout`), one per string.
    public init(publicKeyPEMs pems: [String]) throws(KeyFileError) {
        var raw: [[UInt8]] = []
        for pem in pems { raw.append(try PublicationSignature.publicKey(pem: pem)) }
        try self.init(publicKeys: raw)
    }

    /// Nil when `bytes` is a publication signed by one of the keys, else why not.
    public func check(_ bytes: some DataProtocol) -> Refusal? {
        let p = Array(bytes)
        let layout = PublicationSignature.self
        let n = p.count
        guard n > layout.trailerBytes, p[n - 2] == UInt8(ascii: "\""), p[n - 1] == UInt8(ascii: "}") else {
            return .unsigned
        }
        let kidStart = n - layout.trailerBytes + layout.kidOpen.count
        let sigStart = kidStart + layout.keyIdHexLength + layout.sigOpen.count
        guard p[(n - layout.trailerBytes)..<kidStart].elementsEqual(layout.kidOpen),
            p[(kidStart + layout.keyIdHexLength)..<sigStart].elementsEqual(layout.sigOpen),
            let signature = Self.unhex(p[sigStart..<(n - 2)]),
            Self.unhex(p[kidStart..<(kidStart + layout.keyIdHexLength)]) != nil
        else { return .unsigned }
        let kid = String(decoding: p[kidStart..<(kidStart + layout.keyIdHexLength)], as: UTF8.self)
        guard let raw = keys[kid], let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw) else {
            return .unknownKey
        }
        var message = Array(p[..<(n - layout.sigTrailerBytes)])
        message.append(UInt8(ascii: "\""))
        message.append(UInt8(ascii: "}"))
        return key.isValidSignature(signature, for: message) ? nil : .badSignature
    }

    /// The bytes of lowercase hex `digits`, or nil (uppercase is not the layout).
    static func unhex(_ digits: ArraySlice<UInt8>) -> [UInt8]? {
        guard digits.count % 2 == 0 else { return nil }
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            default: return nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(digits.count / 2)
        var i = digits.startIndex
        while i < digits.endIndex {
            guard let hi = value(digits[i]), let lo = value(digits[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}
