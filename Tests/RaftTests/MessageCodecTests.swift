// MessageCodecTests.swift — the wire format: round trip of every message kind,
// and malformed input (random bytes, truncations, bit flips) that must throw,
// never trap.

import XCTest

@testable import Raft

final class MessageCodecTests: XCTestCase {
    func randomMessage(_ kind: MessageKind, _ rng: inout TestRNG) -> Message {
        let term = UInt64.random(in: 1...1_000_000, using: &rng)
        var m = Message(
            kind: kind, from: UInt64.random(in: 1...5, using: &rng), to: 6, term: term,
            logTerm: UInt64.random(in: 0...term, using: &rng),
            index: UInt64.random(in: 0...1_000_000, using: &rng),
            commit: rng.next(), reject: rng.chance(0.5), rejectHint: rng.next(), leaseTick: rng.next())
        switch kind {
        case .append:
            var t = m.logTerm
            for k in 0..<Int.random(in: 0...5, using: &rng) {
                t = UInt64.random(in: t...term, using: &rng)
                let data = (0..<Int.random(in: 0...40, using: &rng)).map { _ in
                    UInt8.random(in: 0...255, using: &rng)
                }
                m.entries.append(
                    Entry(
                        index: m.index + 1 + UInt64(k), term: t, kind: EntryKind(rawValue: UInt8(k % 3))!,
                        data: data))
            }
        case .snapshot:
            m.snapshot = Snapshot(
                index: UInt64.random(in: 1...1000, using: &rng),
                term: UInt64.random(in: 1...term, using: &rng),
                data: (0..<Int.random(in: 0...64, using: &rng)).map { _ in
                    UInt8.random(in: 0...255, using: &rng)
                })
        case .vote:
            m.transfer = rng.chance(0.5)
        default:
            break
        }
        return m
    }

    func testRoundTripEveryKind() throws {
        var rng = TestRNG(seed: 42)
        for kind in MessageKind.allCases {
            for _ in 0..<50 {
                let m = randomMessage(kind, &rng)
                XCTAssertNil(m.structuralProblem(), "\(m)")
                let bytes = m.encoded()
                XCTAssertEqual(bytes[0], Message.version)
                XCTAssertEqual(try Message.decode(bytes[...]), m)
                // Decoding works from a slice that does not start at 0.
                let framed = [0xAA, 0xBB] + bytes + [0xCC]
                XCTAssertEqual(try Message.decode(framed[2..<(framed.count - 1)]), m)
            }
        }
    }

    func testTruncationsAndTrailingBytesThrow() {
        var rng = TestRNG(seed: 7)
        for kind in MessageKind.allCases {
            let bytes = randomMessage(kind, &rng).encoded()
            for n in 0..<bytes.count {
                XCTAssertThrowsError(try Message.decode(bytes[0..<n]), "\(kind) truncated to \(n)")
            }
            XCTAssertThrowsError(try Message.decode((bytes + [0])[...])) { error in
                XCTAssertEqual(error as? MessageDecodingError, .trailingBytes(1))
            }
        }
    }

    func testRandomBytesAndBitFlipsNeverTrap() {
        var rng = TestRNG(seed: 1234)
        var decoded = 0
        for _ in 0..<20_000 {
            let n = Int.random(in: 0...200, using: &rng)
            var bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if n > 2 && rng.chance(0.7) {
                bytes[0] = Message.version  // get past the first checks more often
                bytes[1] = UInt8.random(in: 1...10, using: &rng)
                bytes[2] = UInt8.random(in: 0...7, using: &rng)
            }
            if (try? Message.decode(bytes[...])) != nil { decoded += 1 }
        }
        // Bit flips and overwrites of valid frames: whatever decodes is well-formed.
        for _ in 0..<20_000 {
            let kind = MessageKind.allCases.randomElement(using: &rng)!
            var bytes = randomMessage(kind, &rng).encoded()
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                if rng.chance(0.5) {
                    bytes[i] ^= UInt8(1) << UInt8.random(in: 0...7, using: &rng)
                } else {
                    bytes[i] = [0x00, 0xFF, 0x7F, 0x80].randomElement(using: &rng)!
                }
            }
            if let m = try? Message.decode(bytes[...]) {
                XCTAssertNil(m.structuralProblem())
                XCTAssertEqual(m.encoded(), bytes, "a decoded frame re-encodes to the same bytes")
                decoded += 1
            }
        }
        XCTAssertGreaterThan(decoded, 0)
    }

    func testHugeCountsAreRejectedBeforeAllocating() {
        var bytes = Message(kind: .append, from: 1, to: 2, term: 1).encoded()
        // Entry count field sits right after the 3-byte prefix and 8 u64 fields.
        let countOffset = 3 + 8 * 8
        for (k, b) in [0xFF, 0xFF, 0xFF, 0xFF].enumerated() { bytes[countOffset + k] = UInt8(b) }
        XCTAssertThrowsError(try Message.decode(bytes[...])) { error in
            XCTAssertEqual(error as? MessageDecodingError, .limitExceeded("entry count"))
        }
        bytes[countOffset] = 1
        bytes[countOffset + 1] = 0
        bytes[countOffset + 2] = 0
        bytes[countOffset + 3] = 0
        XCTAssertThrowsError(try Message.decode(bytes[...]))  // count 1 but no entry bytes
    }

    func testStructurallyInvalidMessagesAreRejected() {
        var bad = Message(kind: .append, from: 1, to: 2, term: 3, index: 10)
        bad.entries = [Entry(index: 12, term: 3)]
        XCTAssertThrowsError(try Message.decode(badEncoding(bad)[...]))
        XCTAssertThrowsError(
            try Message.decode(Message(kind: .heartbeat, from: 2, to: 2, term: 1).encoded()[...]))
        XCTAssertThrowsError(
            try Message.decode(Message(kind: .vote, from: 1, to: 2, term: 0).encoded()[...]))
        // A node drops such messages instead of trapping.
        let node = RaftNode(config: Config(id: 2, voters: [1, 2, 3]))
        node.step(bad)
        node.step(
            Message(
                kind: .append, from: 1, to: 2, term: 1, entries: [Entry(index: 1, term: 1, kind: .config, data: [])]))
        node.step(Message(kind: .heartbeat, from: 1, to: 3, term: 1))
        XCTAssertEqual(node.droppedMessages, 3)
        XCTAssertEqual(node.term, 0)
    }

    /// Encodes without the structural check (encode does not validate).
    func badEncoding(_ m: Message) -> [UInt8] { m.encoded() }
}
