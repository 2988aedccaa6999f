// The node's signer (`-sign-key`) against docs/vectors/signatures.json: it
// reproduces every signed payload byte for byte from the unsigned one and
// the vector's key (Ed25519 is deterministic), PulseCore's verifier gives
// every case's result, and a bad key file is one line at start-up.
import Foundation
import PulseCore
import XCTest

@testable import Pulse

final class PublicationSignerTests: XCTestCase {
    struct Vectors: Decodable {
        struct Key: Decodable {
            var name, seed_hex, public_hex, key_id, private_pem, public_pem: String
        }
        struct Case: Decodable {
            var name, payload, result: String
            var unsigned: String?
            var signed_by: String?
        }
        var keys: [Key]
        var trusted: [String]
        var cases: [Case]
    }

    static func vectors() throws -> Vectors {
        var url = URL(fileURLWithPath: #filePath)
        while url.pathComponents.count > 1 && url.lastPathComponent != "Tests" { url.deleteLastPathComponent() }
        let file = url.deletingLastPathComponent().appendingPathComponent("docs/vectors/signatures.json")
        return try JSONDecoder().decode(Vectors.self, from: Data(contentsOf: file))
    }

    private func keyFile(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "sign-\(UUID().uuidString).key"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    func testSignerReproducesTheVectors() throws {
        let v = try Self.vectors()
        var signers: [String: PublicationSigner] = [:]
        for key in v.keys {
            let signer = try PublicationSigner(keyFile: try keyFile(key.private_pem))
            XCTAssertEqual(PublicationSignature.hex(signer.publicKey), key.public_hex, key.name)
            XCTAssertEqual(signer.keyId, key.key_id, key.name)
            signers[key.name] = signer
        }
        var reproduced = 0
        for c in v.cases {
            guard let unsigned = c.unsigned, let by = c.signed_by, let signer = signers[by] else { continue }
            let signed = signer.sign(Data(unsigned.utf8))
            XCTAssertEqual(String(decoding: signed, as: UTF8.self), c.payload, c.name)
            // In place, as the beat path does: exactly the overhead, no more.
            var buffer = [UInt8](unsigned.utf8) + [UInt8](repeating: 0, count: PublicationSignature.overheadBytes)
            let n = buffer.withUnsafeMutableBytes {
                signer.sign($0.baseAddress!, length: unsigned.utf8.count, capacity: $0.count)
            }
            XCTAssertEqual(n, buffer.count, c.name)
            XCTAssertEqual(String(decoding: buffer, as: UTF8.self), c.payload, c.name)
            reproduced += 1
        }
        XCTAssertGreaterThanOrEqual(reproduced, 5)
    }

    func testVerifierGivesEveryCasesResult() throws {
        let v = try Self.vectors()
        let pems = v.keys.filter { v.trusted.contains($0.name) }.map(\.public_pem)
        let verifier = try PublicationVerifier(publicKeyPEMs: pems)
        XCTAssertEqual(verifier.keyIds, v.keys.filter { v.trusted.contains($0.name) }.map(\.key_id).sorted())
        for c in v.cases {
            XCTAssertEqual(verifier.check(Data(c.payload.utf8))?.rawValue ?? "valid", c.result, c.name)
        }
        // A signed frame still decodes as a frame (kid and sig are ordinary members).
        let frame = try XCTUnwrap(v.cases.first { $0.result == "valid" && $0.payload.contains("beatframe") })
        XCTAssertEqual(try BeatFrameDecoder.decode([UInt8](frame.payload.utf8)).beatIndex, 42)
    }

    func testSignRefusesWhatItCannotSign() throws {
        let signer = try PublicationSigner(seed: [UInt8](repeating: 1, count: 32))
        var small = [UInt8](#"{"a":1}"#.utf8) + [UInt8](repeating: 0, count: PublicationSignature.overheadBytes - 1)
        XCTAssertEqual(small.withUnsafeMutableBytes { signer.sign($0.baseAddress!, length: 7, capacity: $0.count) }, -1)
        XCTAssertEqual(signer.sign(Data("[1]".utf8)), Data("[1]".utf8), "not an object: unchanged")
        XCTAssertThrowsError(try PublicationSigner(seed: [1, 2, 3]))
    }

    func testBadKeyFilesAreOneLineAtStartUp() throws {
        let v = try Self.vectors()
        let bad = [
            try keyFile(v.keys[0].public_pem),  // the public half
            try keyFile("-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n"),
            try keyFile(
                "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VuBCIEIIfojrNUpjQ04SqXJnQ/+BeZrsNfIhebd0HMQBjTvjvN\n-----END PRIVATE KEY-----\n"
            ),  // X25519, not Ed25519
            NSTemporaryDirectory() + "no-such-\(UUID().uuidString).key",
        ]
        for path in bad {
            XCTAssertThrowsError(try PulseCommand.parseConfig(["-sign-key", path], environment: [:]), path) { error in
                XCTAssertTrue("\(error)".contains("-sign-key"), "\(error)")
                XCTAssertFalse("\(error)".contains("\n"), "one line: \(error)")
            }
        }
        let good = try PulseCommand.parseConfig(["-sign-key", try keyFile(v.keys[0].private_pem)], environment: [:])
        XCTAssertFalse(good.signKey.isEmpty)
    }
}
