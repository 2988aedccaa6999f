// Signing/PublicationSigner.swift — owns the node's Ed25519 signing key
// (`-sign-key FILE`) and signs what the node publishes in the layout of
// `PublicationSignature` (PulseCore): beat frames on the beat path, timeline
// publications and replies, tempo announcements.
//
// Guarantees:
// - `sign(_:length:capacity:)` allocates nothing: libsodium's
//   `crypto_sign_detached` writes into a buffer allocated here at start-up
//   and the hex digits are written in place (measured by the jemalloc
//   allocation test of the beat path).
// - The secret key lives in memory allocated once, locked (`sodium_mlock`,
//   best effort) and wiped when the signer goes away.
// - The key file is read once at start-up; a file that is not a PEM Ed25519
//   private key is a one-line start-up error.
import CSodium
import Foundation
import PulseCore

/// Signs publications with one Ed25519 key. Loop thread only (the signature
/// scratch buffer is shared by every call).
final class PublicationSigner {
    /// The key id publications carry (PublicationSignature.keyId of the public key).
    let keyId: String
    /// The raw 32-byte public key.
    let publicKey: [UInt8]
    /// libsodium's 64-byte secret key (seed ‖ public key).
    private let secretKey: UnsafeMutablePointer<UInt8>
    /// 64 bytes for the signature being written.
    private let signature: UnsafeMutablePointer<UInt8>
    /// `,"kid":"<kid>"}` then `","sig":"`: copied, never built, on the beat path.
    private let kidMember: UnsafeMutablePointer<UInt8>
    private let kidMemberCount: Int
    private let sigOpen: UnsafeMutablePointer<UInt8>
    private let sigOpenCount: Int
    /// Where `signFrame` writes a signed frame (a frame is at most ~1.5 KB:
    /// a 128-byte cluster id and 64-byte phase names, escaped).
    private let frameBuffer: UnsafeMutableRawBufferPointer
    static let frameCapacity = 4096

    /// libsodium's Ed25519 sizes, checked against its `crypto_sign_*bytes()` at start-up.
    static let seedBytes = 32, publicKeyBytes = 32, secretKeyBytes = 64, signatureBytes = 64

    /// Reads a PEM Ed25519 private key (`openssl genpkey -algorithm ed25519`).
    convenience init(keyFile path: String) throws {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw PulseError.config("-sign-key \(path): cannot read it (\(error.localizedDescription))")
        }
        do {
            try self.init(seed: try PublicationSignature.privateSeed(pem: text))
        } catch let error as KeyFileError {
            throw PulseError.config("-sign-key \(path): \(error.description)")
        }
    }

    /// `seed`: the 32-byte Ed25519 private key (RFC 8032).
    init(seed: [UInt8]) throws {
        guard sodium_init() >= 0, crypto_sign_secretkeybytes() == Self.secretKeyBytes,
            crypto_sign_bytes() == Self.signatureBytes, crypto_sign_seedbytes() == Self.seedBytes
        else { throw PulseError.config("-sign-key: libsodium could not initialise") }
        guard seed.count == Self.seedBytes else {
            throw PulseError.config("-sign-key: an Ed25519 seed is 32 bytes (got \(seed.count))")
        }
        secretKey = .allocate(capacity: Self.secretKeyBytes)
        _ = sodium_mlock(secretKey, Self.secretKeyBytes)
        var pk = [UInt8](repeating: 0, count: Self.publicKeyBytes)
        _ = crypto_sign_seed_keypair(&pk, secretKey, seed)
        publicKey = pk
        keyId = PublicationSignature.keyId(publicKey: pk)
        signature = .allocate(capacity: Self.signatureBytes)
        let kid = PublicationSignature.kidOpen + Array(keyId.utf8) + [UInt8(ascii: "\""), UInt8(ascii: "}")]
        kidMemberCount = kid.count
        kidMember = .allocate(capacity: kid.count)
        kidMember.initialize(from: kid, count: kid.count)
        sigOpenCount = PublicationSignature.sigOpen.count
        sigOpen = .allocate(capacity: sigOpenCount)
        sigOpen.initialize(from: PublicationSignature.sigOpen, count: sigOpenCount)
        frameBuffer = .allocate(byteCount: Self.frameCapacity, alignment: 8)
    }

    deinit {
        sodium_munlock(secretKey, Self.secretKeyBytes)  // also wipes it
        secretKey.deallocate()
        signature.deallocate()
        kidMember.deallocate()
        sigOpen.deallocate()
        frameBuffer.deallocate()
    }

    /// Signs the JSON object in `buffer[0..<length]` (ending in `}`) in place
    /// and returns its new length, or -1 (nothing changed) when it does not
    /// end in `}` or `capacity` has no room for
    /// `PublicationSignature.overheadBytes` more. Allocation-free.
    func sign(_ buffer: UnsafeMutableRawPointer, length: Int, capacity: Int) -> Int {
        let bytes = buffer.assumingMemoryBound(to: UInt8.self)
        guard length > 1, bytes[length - 1] == UInt8(ascii: "}"),
            length + PublicationSignature.overheadBytes <= capacity
        else { return -1 }
        // S = U ,"kid":"<kid>"}
        var n = length - 1
        (bytes + n).update(from: kidMember, count: kidMemberCount)
        n += kidMemberCount
        _ = crypto_sign_detached(signature, nil, bytes, UInt64(n), secretKey)
        // P = S without its `"}`, then ","sig":"<hex>"}
        n -= 2
        (bytes + n).update(from: sigOpen, count: sigOpenCount)
        n += sigOpenCount
        for i in 0..<Self.signatureBytes {
            let b = signature[i]
            bytes[n] = Self.hexDigit(b >> 4)
            bytes[n + 1] = Self.hexDigit(b & 0xf)
            n += 2
        }
        bytes[n] = UInt8(ascii: "\"")
        bytes[n + 1] = UInt8(ascii: "}")
        return n + 2
    }

    /// The beat path: `frame` (an encoded frame) copied into the signer's
    /// buffer and signed there; empty if it does not fit (it always does).
    /// Allocation-free. Valid until the next call.
    func signFrame(_ frame: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        guard let source = frame.baseAddress, frame.count + PublicationSignature.overheadBytes <= frameBuffer.count,
            let out = frameBuffer.baseAddress
        else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        out.copyMemory(from: source, byteCount: frame.count)
        let n = sign(out, length: frame.count, capacity: frameBuffer.count)
        return UnsafeRawBufferPointer(start: out, count: max(n, 0))
    }

    /// `payload` signed (off the beat path: allocates); unchanged if it is not a JSON object.
    func sign(_ payload: Data) -> Data {
        var bytes = [UInt8](payload)
        let length = bytes.count
        bytes.append(contentsOf: repeatElement(0, count: PublicationSignature.overheadBytes))
        let signed = bytes.withUnsafeMutableBytes { sign($0.baseAddress!, length: length, capacity: $0.count) }
        return signed < 0 ? payload : Data(bytes[..<signed])
    }

    @inline(__always)
    private static func hexDigit(_ v: UInt8) -> UInt8 {
        v < 10 ? UInt8(ascii: "0") &+ v : UInt8(ascii: "a") &+ (v &- 10)
    }
}

extension NatsLink {
    /// Publishes `payload`, signed when the node has a signing key (timeline
    /// publications and replies, tempo announcements; not for the beat path).
    @discardableResult
    func publishSigned(subject: String, payload: Data) -> Bool {
        publish(subject: subject, payload: signer.map { $0.sign(payload) } ?? payload)
    }
}
