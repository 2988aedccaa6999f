// WireTests.swift — BeatFrame encoder, RFC 3339 writer, ASCII writers, window ids.

import Crypto
import Foundation
import XCTest

@testable import PulseCore

final class WireTests: XCTestCase {
    private static let windowHex = "9e3a4f63e65571fe2ad13d750f55f75b"

    /// Encodes into an exact-size-or-larger buffer and returns the bytes.
    private func encode(
        _ enc: BeatFrameEncoder, beatIndex: Int64 = 8, downbeat: Bool = true, phaseIndex: Int = 0,
        hlc: HLCStamp = HLCStamp(wallMs: 0x18f_3a2b_4c5d, counter: 1),
        deadlineUnixMs: Int64 = 1_756_987_200_500,
        tempoBpm: Int64 = 120, windowId: String = windowHex, term: UInt64 = 3, degraded: Bool = false
    ) -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: enc.maxFrameBytes)
        let wid = Array(windowId.utf8)
        let n = buf.withUnsafeMutableBytes { b in
            wid.withUnsafeBytes { w in
                enc.encode(
                    into: b, beatIndex: beatIndex, downbeat: downbeat, phaseIndex: phaseIndex, hlc: hlc,
                    deadlineUnixMs: deadlineUnixMs, tempoBpm: tempoBpm, windowId: w.baseAddress!, term: term,
                    degraded: degraded)
            }
        }
        XCTAssertGreaterThan(n, 0)
        return Array(buf[0..<max(n, 0)])
    }

    private func json(_ bytes: [UInt8]) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
    }

    func testEncodeExactBytesAndParsedFields() throws {
        let enc = BeatFrameEncoder(
            clusterId: "chorus-aus-01", phases: ["plan", "work", "review"], nodeId: "node-abcd")
        let bytes = encode(enc)
        let expected =
            #"{"type":"backbeat.beatframe.v1","cluster_id":"chorus-aus-01","beat_index":8,"downbeat":true,"#
            + #""phase":"plan","hlc":"18f3a2b4c5d:0001:abcd","deadline_at":"2025-09-04T12:00:00.500Z","#
            + #""tempo_bpm":120,"window_id":"9e3a4f63e65571fe2ad13d750f55f75b","term":3}"#
        XCTAssertEqual(String(decoding: bytes, as: UTF8.self), expected)

        let obj = try json(bytes)
        XCTAssertEqual(obj.count, 10)
        XCTAssertEqual(obj["type"] as? String, "backbeat.beatframe.v1")
        XCTAssertEqual(obj["cluster_id"] as? String, "chorus-aus-01")
        XCTAssertEqual((obj["beat_index"] as? NSNumber)?.int64Value, 8)
        XCTAssertEqual(obj["downbeat"] as? Bool, true)
        XCTAssertEqual(obj["phase"] as? String, "plan")
        XCTAssertEqual(obj["hlc"] as? String, "18f3a2b4c5d:0001:abcd")
        XCTAssertEqual(obj["deadline_at"] as? String, "2025-09-04T12:00:00.500Z")
        XCTAssertEqual((obj["tempo_bpm"] as? NSNumber)?.int64Value, 120)
        XCTAssertEqual(obj["window_id"] as? String, Self.windowHex)
        XCTAssertEqual((obj["term"] as? NSNumber)?.uint64Value, 3)
        XCTAssertNil(obj["degraded"])
    }

    func testKeyOrderOnRawBytes() {
        let enc = BeatFrameEncoder(clusterId: "c", phases: ["p"], nodeId: "n1")
        for degraded in [false, true] {
            let s = String(decoding: encode(enc, degraded: degraded), as: UTF8.self)
            var keys = [
                "type", "cluster_id", "beat_index", "downbeat", "phase", "hlc", "deadline_at", "tempo_bpm",
                "window_id", "term",
            ]
            if degraded { keys.append("degraded") }
            var last = s.startIndex
            for key in keys {
                guard let r = s.range(of: "\"\(key)\":", range: last..<s.endIndex) else {
                    XCTFail("\(key) missing or out of order in \(s)")
                    break
                }
                last = r.upperBound
            }
            XCTAssertTrue(s.hasSuffix(degraded ? #","degraded":true}"# : #","term":3}"#), s)
            XCTAssertEqual(s.contains("degraded"), degraded)
        }
    }

    func testFieldValuesVaryCorrectly() throws {
        let enc = BeatFrameEncoder(clusterId: "c", phases: ["plan", "work", "review"], nodeId: "abc")
        XCTAssertEqual(enc.hlcSuffix, "abc")
        let bytes = encode(
            enc, beatIndex: 1_000_000_000_123, downbeat: false, phaseIndex: 2,
            hlc: HLCStamp(wallMs: 0, counter: 0x12345),
            deadlineUnixMs: 0, tempoBpm: 6000, term: .max, degraded: true)
        let obj = try json(bytes)
        XCTAssertEqual((obj["beat_index"] as? NSNumber)?.int64Value, 1_000_000_000_123)
        XCTAssertEqual(obj["downbeat"] as? Bool, false)
        XCTAssertEqual(obj["phase"] as? String, "review")
        XCTAssertEqual(obj["hlc"] as? String, "0:12345:abc")
        XCTAssertEqual(obj["deadline_at"] as? String, "1970-01-01T00:00:00.000Z")
        XCTAssertEqual((obj["tempo_bpm"] as? NSNumber)?.int64Value, 6000)
        XCTAssertTrue(String(decoding: bytes, as: UTF8.self).contains(#""term":18446744073709551615"#))
        XCTAssertEqual(obj["degraded"] as? Bool, true)
    }

    func testEscapingRoundTrips() throws {
        let cluster = "we\"ird\\clu\nster\u{01}\u{1f}\t\u{7f}-é-☃-😀"
        let phases = ["pl\"an", "wo\\rk", "rev\u{08}iew\u{0c}\r"]
        let node = "node-\"\\\n😀"
        let enc = BeatFrameEncoder(clusterId: cluster, phases: phases, nodeId: node)
        XCTAssertEqual(enc.hlcSuffix, "\"\\\n😀")
        for (i, phase) in phases.enumerated() {
            let bytes = encode(enc, phaseIndex: i)
            let obj = try json(bytes)
            XCTAssertEqual(obj["cluster_id"] as? String, cluster)
            XCTAssertEqual(obj["phase"] as? String, phase)
            XCTAssertEqual(obj["hlc"] as? String, "18f3a2b4c5d:0001:" + String(node.suffix(4)))
            // No raw control characters in the output.
            XCTAssertFalse(bytes.contains { $0 < 0x20 })
        }
        XCTAssertEqual(
            String(decoding: JSONEscape.escaped("a\"b\\c\nd\u{01}é"), as: UTF8.self),
            #"a\"b\\c\nd\u0001é"#)
    }

    func testTooSmallBufferReturnsMinusOneAndNeverOverruns() {
        let enc = BeatFrameEncoder(
            clusterId: "chorus-aus-01", phases: ["plan", "work", "review"], nodeId: "node-abcd")
        let exact = encode(enc, degraded: true).count
        let guardBytes = 64
        let wid = Array(Self.windowHex.utf8)
        for size in 0...(exact + 2) {
            var region = [UInt8](repeating: 0xAA, count: size + guardBytes)
            let n = region.withUnsafeMutableBytes { all in
                wid.withUnsafeBytes { w in
                    enc.encode(
                        into: UnsafeMutableRawBufferPointer(rebasing: all[0..<size]), beatIndex: 8,
                        downbeat: true,
                        phaseIndex: 0, hlc: HLCStamp(wallMs: 0x18f_3a2b_4c5d, counter: 1),
                        deadlineUnixMs: 1_756_987_200_500, tempoBpm: 120, windowId: w.baseAddress!, term: 3,
                        degraded: true)
                }
            }
            if size < exact {
                XCTAssertEqual(n, -1, "size \(size)")
                XCTAssertTrue(
                    region.allSatisfy { $0 == 0xAA }, "size \(size): wrote into a too-small buffer")
            } else {
                XCTAssertEqual(n, exact, "size \(size)")
                XCTAssertTrue(
                    region[exact...].allSatisfy { $0 == 0xAA }, "size \(size): wrote past the frame")
            }
        }
    }

    func testMaxFrameBytesBoundsExtremeFrames() {
        let enc = BeatFrameEncoder(
            clusterId: "x\n\"", phases: ["a", "much-longer-phase\u{01}"], nodeId: "nødé")
        let bytes = encode(
            enc, beatIndex: .min, downbeat: false, phaseIndex: 1,
            hlc: HLCStamp(wallMs: .max, counter: .max),
            deadlineUnixMs: RFC3339.maxUnixMs, tempoBpm: .min, term: .max, degraded: true)
        XCTAssertLessThanOrEqual(bytes.count, enc.maxFrameBytes)
        XCTAssertGreaterThan(bytes.count, enc.maxFrameBytes - 20)
        XCTAssertTrue(
            String(decoding: bytes, as: UTF8.self).contains(#""beat_index":-9223372036854775808,"#))
    }

    func testDeadlineIsRFC3339OfNextBeatInstant() throws {
        let e = Timeline.bootstrapEpoch(nowNs: 1_756_987_199_700_000_000, bpm: 120)
        let tl = Timeline(epoch: e, bar: 8, phaseCount: 3)
        let enc = BeatFrameEncoder(
            clusterId: "chorus-aus-01", phases: ["plan", "work", "review"], nodeId: "n-01")
        let fmt = ISO8601DateFormatter()
        fmt.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        fmt.timeZone = TimeZone(identifier: "UTC")
        for k: Int64 in [0, 1, 7, 8, 1000, 123_456_789] {
            let bytes = encode(
                enc, beatIndex: k, downbeat: tl.isDownbeat(k), phaseIndex: tl.phaseIndex(k),
                deadlineUnixMs: tl.deadlineUnixMs(ofBeat: k))
            let obj = try json(bytes)
            let nextNs = tl.instantNs(ofBeat: k + 1)
            XCTAssertEqual(nextNs % 1_000_000, 0)
            XCTAssertEqual(obj["deadline_at"] as? String, RFC3339.string(unixMs: nextNs / 1_000_000))
            let parsed = try XCTUnwrap(fmt.date(from: obj["deadline_at"] as! String))
            XCTAssertEqual(Int64((parsed.timeIntervalSince1970 * 1000).rounded()), nextNs / 1_000_000)
        }
        XCTAssertEqual(
            String(
                decoding: encode(enc, beatIndex: 0, deadlineUnixMs: tl.deadlineUnixMs(ofBeat: 0)),
                as: UTF8.self
            )
            .contains(#""deadline_at":"2025-09-04T12:00:00.500Z""#), true)
    }

    func testRFC3339AgainstFoundation() {
        var rng = SeededRNG.fromEnvironment()
        let fmt = ISO8601DateFormatter()
        fmt.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        fmt.timeZone = TimeZone(identifier: "UTC")
        let maxMs: Int64 = 13_569_465_600_000  // 2400-01-01
        for _ in 0..<5000 {
            let ms = Int64.random(in: 0..<maxMs, using: &rng)
            let ours = RFC3339.string(unixMs: ms)
            XCTAssertEqual(ours.utf8.count, 24)
            // Parse direction (exact up to float rounding of the Date).
            guard let d = fmt.date(from: ours) else {
                XCTFail("Foundation cannot parse \(ours) \(rng.tag)")
                continue
            }
            XCTAssertEqual(Int64((d.timeIntervalSince1970 * 1000).rounded()), ms, "\(ours) \(rng.tag)")
            // Format direction: +0.25 ms so float truncation cannot drop a millisecond.
            let theirs = fmt.string(from: Date(timeIntervalSince1970: (Double(ms) + 0.25) / 1000))
            XCTAssertEqual(ours, theirs, "ms \(ms) \(rng.tag)")
        }
    }

    func testRFC3339EdgeCases() {
        let cases: [(Int64, String)] = [
            (0, "1970-01-01T00:00:00.000Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (1_709_164_800_000, "2024-02-29T00:00:00.000Z"),
            (1_709_251_199_999, "2024-02-29T23:59:59.999Z"),
            (4_107_542_399_999, "2100-02-28T23:59:59.999Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (951_827_696_789, "2000-02-29T12:34:56.789Z"),
            (13_574_563_200_000, "2400-02-29T00:00:00.000Z"),
            (1_756_987_200_500, "2025-09-04T12:00:00.500Z"),
            (RFC3339.maxUnixMs, "9999-12-31T23:59:59.999Z"),
            (RFC3339.minUnixMs, "0000-01-01T00:00:00.000Z"),
        ]
        for (ms, s) in cases {
            XCTAssertEqual(RFC3339.string(unixMs: ms), s, "ms \(ms)")
        }
    }

    func testAsciiWriters() {
        var rng = SeededRNG.fromEnvironment()
        var buf = [UInt8](repeating: 0, count: 32)
        var values: [Int64] = [0, 1, 9, 10, -1, -10, .max, .min]
        for _ in 0..<2000 {
            values.append(Int64(bitPattern: rng.next()) >> Int.random(in: 0...63, using: &rng))
        }
        for v in values {
            let n = buf.withUnsafeMutableBytes { AsciiWriter.writeDecimal(v, to: $0.baseAddress!) }
            XCTAssertEqual(String(decoding: buf[0..<n], as: UTF8.self), String(v), rng.tag)
            XCTAssertEqual(AsciiWriter.decimalLength(v), n)
            let u = UInt64(bitPattern: v)
            let h = buf.withUnsafeMutableBytes {
                AsciiWriter.writeHex(u, minDigits: 4, to: $0.baseAddress!)
            }
            let ref = String(u, radix: 16)
            XCTAssertEqual(
                String(decoding: buf[0..<h], as: UTF8.self),
                String(repeating: "0", count: max(0, 4 - ref.count)) + ref, rng.tag)
            let ud = buf.withUnsafeMutableBytes { AsciiWriter.writeDecimal(u, to: $0.baseAddress!) }
            XCTAssertEqual(String(decoding: buf[0..<ud], as: UTF8.self), String(u))
        }
    }

    func testWindowIdAgainstIndependentOracles() {
        // Oracle 1: `printf 'chorus-aus-01:8' | sha256sum` on the build machine.
        let fromShell = "9e3a4f63e65571fe2ad13d750f55f75bb6a50601e16b96b6ade7aecbb53eb46c"
        // Oracle 2: swift-crypto directly, hex formatted here.
        let digest = SHA256.hash(data: Array("chorus-aus-01:8".utf8))
        let viaCrypto = digest.map { String(format: "%02x", $0) }.joined()
        XCTAssertEqual(viaCrypto, fromShell)
        XCTAssertEqual(
            WindowId.string(clusterId: "chorus-aus-01", barStart: 8), String(fromShell.prefix(32)))
        XCTAssertEqual(
            WindowId.string(clusterId: "chorus-aus-01", barStart: 0),
            String("63cb2c5b1bbba231251cb8d7d653c3998fe63ff9254ee4d0df07e1b490534610".prefix(32)))
        for bar: Int64 in [16, 1_000_000_000_000, -8] {
            let d = SHA256.hash(data: Array("c-\(bar):\(bar)".utf8)).map { String(format: "%02x", $0) }
                .joined()
            XCTAssertEqual(WindowId.string(clusterId: "c-\(bar)", barStart: bar), String(d.prefix(32)))
        }
    }

    func testWindowIdCache() {
        let cache = WindowIdCache(clusterId: "chorus-aus-01")
        XCTAssertNil(cache.lookup(barStart: 0))
        cache.prepare(barStart: 0)
        cache.prepare(barStart: 8)
        func hex(_ p: UnsafeRawPointer?) -> String? {
            p.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: 32), as: UTF8.self) }
        }
        XCTAssertEqual(hex(cache.lookup(barStart: 8)), Self.windowHex)
        XCTAssertEqual(
            hex(cache.lookup(barStart: 0)), WindowId.string(clusterId: "chorus-aus-01", barStart: 0))
        XCTAssertNil(cache.lookup(barStart: 16))
        let p8 = cache.lookup(barStart: 8)
        cache.prepare(barStart: 8)  // already there: no change
        XCTAssertEqual(cache.lookup(barStart: 8), p8)
        cache.prepare(barStart: 16)  // evicts the older bar 0
        XCTAssertNil(cache.lookup(barStart: 0))
        XCTAssertEqual(hex(cache.lookup(barStart: 8)), Self.windowHex)
        XCTAssertEqual(
            hex(cache.lookup(barStart: 16)), WindowId.string(clusterId: "chorus-aus-01", barStart: 16))
    }
}
