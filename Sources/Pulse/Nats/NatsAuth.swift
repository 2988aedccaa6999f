// Nats: credentials for the NATS connection, validated at start-up.
//
// Owns the parsing of nkey seeds (NATS "nkeys": base32 of a prefix, an
// Ed25519 seed and a CRC-16) and of creds files (a user JWT and its seed), the
// derivation of a seed's public key (the C client's
// `natsOptions_SetNKeyFromSeed` needs it), and URL redaction for logs and
// /health. The link connects in the background, so a malformed file must be
// refused here, before the node starts; a well-formed one the server refuses
// shows at run time (NatsLink logs the server's error, connected 0).
import Crypto
import Foundation

/// NATS credentials: pure parsing and formatting, no I/O.
enum NatsAuth {
    /// Why a credentials file cannot be used (one line, never the secret).
    struct Invalid: Error, Equatable {
        let reason: String
    }

    /// The nkey prefix bytes (nkeys' PrefixByte values).
    static let seedPrefix: UInt8 = 18 << 3
    static let userPrefix: UInt8 = 20 << 3

    /// The public key ("U…") of a user seed ("SU…"); throws if it is not one.
    static func userPublicKey(seed: String) throws -> String {
        guard let raw = base32Decode(seed), raw.count == 36 else { throw Invalid(reason: "not an nkey seed") }
        guard crc16(raw[0..<34]) == UInt16(raw[34]) | UInt16(raw[35]) << 8 else {
            throw Invalid(reason: "nkey seed checksum does not match")
        }
        guard raw[0] & 0xF8 == seedPrefix else { throw Invalid(reason: "not an nkey seed") }
        let kind = (raw[0] & 0x07) << 5 | (raw[1] & 0xF8) >> 3
        guard kind == userPrefix else { throw Invalid(reason: "the nkey seed is not a user's (it must start with SU)") }
        let key: Curve25519.Signing.PrivateKey
        do {
            key = try Curve25519.Signing.PrivateKey(rawRepresentation: raw[2..<34])
        } catch {
            throw Invalid(reason: "not an Ed25519 seed")
        }
        return encodePublic(Array(key.publicKey.rawRepresentation))
    }

    /// A new user seed and its public key (tests and tooling).
    static func generateUser() -> (seed: String, publicKey: String) {
        let key = Curve25519.Signing.PrivateKey()
        var raw: [UInt8] = [seedPrefix | userPrefix >> 5, (userPrefix & 31) << 3]
        raw += Array(key.rawRepresentation)
        let crc = crc16(raw[...])
        raw += [UInt8(crc & 0xFF), UInt8(crc >> 8)]
        return (base32Encode(raw), encodePublic(Array(key.publicKey.rawRepresentation)))
    }

    /// The seed in an nkey seed file: its first line starting with "SU"
    /// (comments and blank lines around it are allowed), and its public key.
    static func parseSeedFile(fileContents: String) throws -> (seed: String, publicKey: String) {
        let lines = fileContents.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        guard let seed = lines.first(where: { $0.hasPrefix("SU") }) else {
            throw Invalid(reason: "no user nkey seed (a line starting with SU)")
        }
        return (seed, try userPublicKey(seed: seed))
    }

    /// A creds file: the user JWT between its BEGIN/END lines, and the seed
    /// between its own. Checks the shapes (JWT: three base64url parts; seed:
    /// a valid user seed); the server checks the signatures.
    static func parseCreds(fileContents: String) throws -> (jwt: String, publicKey: String) {
        let lines = fileContents.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        func block(_ marker: String) -> String? {
            guard let begin = lines.firstIndex(where: { $0.hasPrefix("-----BEGIN") && $0.contains(marker) }) else {
                return nil
            }
            return lines[(begin + 1)...].first { !$0.isEmpty }
        }
        guard let jwt = block("USER JWT") else { throw Invalid(reason: "no '-----BEGIN NATS USER JWT-----' block") }
        let parts = jwt.split(separator: ".", omittingEmptySubsequences: false)
        let base64url = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
        guard parts.count == 3, parts.allSatisfy({ !$0.isEmpty && $0.unicodeScalars.allSatisfy(base64url.contains) })
        else { throw Invalid(reason: "the user JWT is not a JWT") }
        guard let seed = block("NKEY SEED") else { throw Invalid(reason: "no '-----BEGIN USER NKEY SEED-----' block") }
        return (jwt, try userPublicKey(seed: seed))
    }

    /// `url` without its user information: `nats://user:secret@host:4222`
    /// becomes `nats://***@host:4222` (lists: each entry). For logs and /health.
    static func redact(_ url: String) -> String {
        url.split(separator: ",", omittingEmptySubsequences: false).map { entry -> String in
            let text = String(entry)
            guard let at = text.lastIndex(of: "@") else { return text }
            let start = text.range(of: "://")?.upperBound ?? text.startIndex
            guard start <= at else { return text }
            return String(text[..<start]) + "***" + String(text[at...])
        }.joined(separator: ",")
    }

    // MARK: encoding

    static func encodePublic(_ key: [UInt8]) -> String {
        var raw = [userPrefix] + key
        let crc = crc16(raw[...])
        raw += [UInt8(crc & 0xFF), UInt8(crc >> 8)]
        return base32Encode(raw)
    }

    /// CRC-16/XMODEM (polynomial 0x1021, initial 0), as nkeys uses it.
    static func crc16(_ bytes: ArraySlice<UInt8>) -> UInt16 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc ^= UInt16(byte) << 8
            for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        }
        return crc
    }

    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".utf8)

    /// RFC 4648 base32 without padding.
    static func base32Encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for byte in bytes {
            buffer = buffer << 8 | UInt32(byte)
            bits += 8
            while bits >= 5 {
                out.append(alphabet[Int((buffer >> UInt32(bits - 5)) & 31)])
                bits -= 5
            }
            buffer &= (1 << UInt32(bits)) - 1
        }
        if bits > 0 { out.append(alphabet[Int((buffer << UInt32(5 - bits)) & 31)]) }
        return String(decoding: out, as: UTF8.self)
    }

    /// RFC 4648 base32 without padding; nil on any other character. At most
    /// 1 KiB of text (a seed is 58 characters).
    static func base32Decode(_ text: String) -> [UInt8]? {
        guard text.utf8.count <= 1024 else { return nil }
        var out: [UInt8] = []
        var buffer: UInt32 = 0
        var bits = 0
        for char in text.utf8 {
            guard let value = alphabet.firstIndex(of: char) else { return nil }
            buffer = buffer << 5 | UInt32(value)
            bits += 5
            if bits >= 8 {
                out.append(UInt8((buffer >> UInt32(bits - 8)) & 0xFF))
                bits -= 8
            }
            buffer &= (1 << UInt32(bits)) - 1
        }
        return out
    }
}
