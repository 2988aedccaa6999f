// BeatFrameDecoderTests.swift — the one BeatFrame decoder: round trips with the
// encoder, and hostile payloads (huge, negative, fractional and string
// indices, wrong type, missing and duplicate fields, garbage, empty, deep
// nesting, 1 MB) refused with their reason, never a trap.

import Foundation
import XCTest

@testable import PulseCore

final class BeatFrameDecoderTests: XCTestCase {
    private static let window = "9e3a4f63e65571fe2ad13d750f55f75b"
    private static let deadline = "2025-09-04T12:00:00.500Z"
    private static let deadlineMs: Int64 = 1_756_987_200_500

    /// A valid frame as text, with `beat_index` (or any field) replaced by raw JSON.
    private func frame(
        _ overrides: [String: String] = [:], removing: Set<String> = [], extra: String = ""
    ) -> String {
        let fields: [(String, String)] = [
            ("type", #""backbeat.beatframe.v1""#), ("cluster_id", #""c1""#), ("beat_index", "42"),
            ("downbeat", "false"), ("phase", #""build""#), ("hlc", #""18f3a2b4c5d:0001:de-1""#),
            ("deadline_at", "\"\(Self.deadline)\""), ("tempo_bpm", "120"), ("window_id", "\"\(Self.window)\""),
            ("term", "3"),
        ]
        var parts = fields.filter { !removing.contains($0.0) }.map { "\"\($0.0)\":\(overrides[$0.0] ?? $0.1)" }
        if !extra.isEmpty { parts.append(extra) }
        return "{" + parts.joined(separator: ",") + "}"
    }

    private func decode(_ text: String) -> Result<DecodedBeatFrame, BeatFrameDecodeError> {
        BeatFrameDecoder.result(Array(text.utf8))
    }

    private func reason(_ text: String) -> String? {
        if case .failure(let error) = decode(text) { return error.reason }
        return nil
    }

    func testDecodesAValidFrame() throws {
        let frame = try decode(frame()).get()
        XCTAssertEqual(frame.clusterId, "c1")
        XCTAssertEqual(frame.beatIndex, 42)
        XCTAssertFalse(frame.downbeat)
        XCTAssertEqual(frame.phase, "build")
        XCTAssertEqual(frame.hlc, HLCStamp(wallMs: 0x18f_3a2b_4c5d, counter: 1))
        XCTAssertEqual(frame.hlcSuffix, "de-1")
        XCTAssertEqual(frame.deadlineUnixMs, Self.deadlineMs)
        XCTAssertEqual(frame.tempoBpm, 120)
        XCTAssertEqual(frame.windowId, Self.window)
        XCTAssertEqual(frame.term, 3)
        XCTAssertFalse(frame.degraded)
        XCTAssertEqual(frame.scheduledNs, Self.deadlineMs * 1_000_000 - 500_000_000)
    }

    func testRoundTripsWithTheEncoder() throws {
        var rng = SeededRNG.fromEnvironment()
        let phases = ["in\"tro", "büild", "tab\there", "x"]
        let encoder = BeatFrameEncoder(clusterId: "chorus-\\aus", phases: phases, nodeId: "node-é:1")
        var buffer = [UInt8](repeating: 0, count: encoder.maxFrameBytes)
        let window = Array(Self.window.utf8)
        for _ in 0..<2000 {
            let k = Int64.random(in: 0...Int64.max, using: &rng)
            let hlc = HLCStamp(
                wallMs: Int64.random(in: 0...Int64.max, using: &rng),
                counter: UInt32.random(in: 0...UInt32.max, using: &rng))
            let deadline = Int64.random(in: RFC3339.minUnixMs...RFC3339.maxUnixMs, using: &rng)
            let bpm = Int64.random(in: 1...6000, using: &rng)
            let term = UInt64.random(in: 0...UInt64.max, using: &rng)
            let degraded = Bool.random(using: &rng)
            let phase = Int.random(in: 0..<phases.count, using: &rng)
            let n = buffer.withUnsafeMutableBytes { out in
                window.withUnsafeBytes {
                    encoder.encode(
                        into: out, beatIndex: k, downbeat: k % 2 == 0, phaseIndex: phase, hlc: hlc,
                        deadlineUnixMs: deadline, tempoBpm: bpm, windowId: $0.baseAddress!, term: term,
                        degraded: degraded)
                }
            }
            let decoded = try BeatFrameDecoder.decode(Array(buffer[0..<n]))
            let expected = DecodedBeatFrame(
                clusterId: "chorus-\\aus", beatIndex: k, downbeat: k % 2 == 0, phase: phases[phase], hlc: hlc,
                hlcSuffix: encoder.hlcSuffix, deadlineUnixMs: deadline,
                tempoBpm: bpm, windowId: Self.window, term: term, degraded: degraded)
            XCTAssertEqual(decoded, expected, "seed \(rng.seed)")
        }
    }

    /// The issue's payloads, and every hostile beat_index, refused with a reason.
    func testHostileIndicesAreRefused() {
        XCTAssertEqual(reason(#"{"beat_index":9223372036854775807}"#), "missing_field")
        XCTAssertEqual(reason(#"{"beat_index":1000000}"#), "missing_field")
        XCTAssertEqual(
            decode(#"{"beat_index":1000000}"#), .failure(.missingField(.type)), "the first missing field is named")
        let hostile = [
            "9223372036854775808", "18446744073709551615", "18446744073709551616", "99999999999999999999999999",
            "-1", "-9223372036854775808", "-0", "9.5", "9.0", "1e3", "1E3", "1e30", "1e-3", "\"9\"", "\"\"", "true",
            "null", "[9]", "{\"v\":9}",
        ]
        for value in hostile {
            XCTAssertEqual(reason(frame(["beat_index": value])), "bad_beat_index", value)
        }
        // Not JSON numbers at all: malformed.
        for value in ["+9", "09", "0x10", "NaN", "Infinity", "-", "9."] {
            XCTAssertNotNil(reason(frame(["beat_index": value])), value)
            XCTAssertNotEqual(reason(frame(["beat_index": value])), nil)
        }
        XCTAssertEqual(try decode(frame(["beat_index": "9223372036854775807"])).get().beatIndex, Int64.max)
        XCTAssertEqual(try decode(frame(["beat_index": "0"])).get().beatIndex, 0)
    }

    func testEveryFieldIsTypedAndRanged() {
        let cases: [(String, String, String)] = [
            ("type", #""backbeat.beatframe.v2""#, "wrong_type"),
            ("type", "1", "wrong_type"),
            ("cluster_id", #""""#, "bad_cluster_id"),
            ("cluster_id", "7", "bad_cluster_id"),
            ("cluster_id", "\"\(String(repeating: "x", count: 129))\"", "bad_cluster_id"),
            ("downbeat", "1", "bad_downbeat"),
            ("downbeat", #""true""#, "bad_downbeat"),
            ("phase", #""""#, "bad_phase"),
            ("hlc", #""18f3a2b4c5d:0001""#, "bad_hlc"),
            ("hlc", #""18F3A2B4C5D:0001:ab""#, "bad_hlc"),
            ("hlc", #""18f3a2b4c5d:0001:""#, "bad_hlc"),
            ("hlc", #""ffffffffffffffff:0001:ab""#, "bad_hlc"),
            ("hlc", "12", "bad_hlc"),
            ("deadline_at", #""2025-02-30T00:00:00.000Z""#, "bad_deadline_at"),
            ("deadline_at", #""2025-09-04T12:00:00Z""#, "bad_deadline_at"),
            ("deadline_at", #""2025-09-04T24:00:00.000Z""#, "bad_deadline_at"),
            ("deadline_at", #""2025-09-04T12:00:00.000+00:00""#, "bad_deadline_at"),
            ("tempo_bpm", "0", "bad_tempo_bpm"),
            ("tempo_bpm", "6001", "bad_tempo_bpm"),
            ("tempo_bpm", "-120", "bad_tempo_bpm"),
            ("tempo_bpm", "120.5", "bad_tempo_bpm"),
            ("window_id", #""9E3A4F63E65571FE2AD13D750F55F75B""#, "bad_window_id"),
            ("window_id", #""9e3a""#, "bad_window_id"),
            ("term", "-1", "bad_term"),
            ("term", "18446744073709551616", "bad_term"),
            ("term", "1.5", "bad_term"),
            ("term", #""3""#, "bad_term"),
        ]
        for (field, value, expected) in cases {
            XCTAssertEqual(reason(frame([field: value])), expected, "\(field): \(value)")
        }
        XCTAssertEqual(try decode(frame(["term": "18446744073709551615"])).get().term, UInt64.max)
        XCTAssertEqual(try decode(frame(["tempo_bpm": "6000"])).get().tempoBpm, 6000)
        XCTAssertEqual(
            try decode(frame(["deadline_at": #""2024-02-29T23:59:59.999Z""#])).get().deadlineUnixMs, 1_709_251_199_999)
        XCTAssertEqual(reason(frame(extra: #""degraded":"yes""#)), "bad_degraded")
        XCTAssertEqual(reason(frame(extra: #""degraded":null"#)), "bad_degraded")
        XCTAssertEqual(try decode(frame(extra: #""degraded":true"#)).get().degraded, true)
    }

    func testMissingAndDuplicateFields() {
        for field in BeatFrameField.allCases where field != .degraded {
            XCTAssertEqual(decode(frame(removing: [field.rawValue])), .failure(.missingField(field)), field.rawValue)
        }
        XCTAssertEqual(decode(frame(extra: #""beat_index":43"#)), .failure(.duplicateField(.beat_index)))
        XCTAssertEqual(reason(frame(extra: #""term":3"#)), "duplicate_field")
        XCTAssertEqual(reason("{}"), "missing_field")
    }

    func testGarbageEmptyAndNotAnObject() {
        XCTAssertEqual(reason(""), "empty")
        XCTAssertEqual(reason(" \n\t "), "empty")
        for garbage in [
            "hello", "{", "}", "{]", "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{,}", "\u{0}", "{\"a\":tru}",
            "{\"a\":\"unterminated}", "{\"a\":\"bad \\x escape\"}", "{\"a\":\"raw\u{1}control\"}", "{'a':1}",
        ] {
            XCTAssertEqual(reason(garbage), "malformed_json", garbage)
        }
        for value in ["[1,2]", "\"text\"", "42", "null", "true"] {
            XCTAssertEqual(reason(value), "not_an_object", value)
        }
        XCTAssertEqual(reason(frame() + "x"), "malformed_json", "trailing bytes")
        XCTAssertNil(reason(frame() + " \r\n"), "trailing whitespace is fine")
        XCTAssertNil(reason(" " + frame()), "leading whitespace is fine")
        // Invalid UTF-8 and lone surrogates in strings.
        var bytes = Array(frame(["phase": "\"ab\""]).utf8)
        let at = bytes.firstIndex(of: UInt8(ascii: "a"))!
        bytes.insert(0xff, at: at)
        XCTAssertEqual(BeatFrameDecoder.result(bytes), .failure(.malformedJSON))
        XCTAssertEqual(reason(frame(["phase": #""\ud800""#])), "malformed_json")
        XCTAssertEqual(reason(frame(["phase": #""\udc00x""#])), "malformed_json")
        XCTAssertEqual(try decode(frame(["phase": #""\u00e9\ud83c\udfb5\/""#])).get().phase, "é🎵/")
    }

    func testUnknownFieldsAreSkippedWithBoundedDepth() throws {
        let nested = #""x":{"a":[1,-2.5e+3,{"b":null,"c":"d\"e"}],"f":true}"#
        XCTAssertEqual(try decode(frame(extra: nested)).get().beatIndex, 42)
        let deep = "\"x\":" + String(repeating: "[", count: 100) + String(repeating: "]", count: 100)
        XCTAssertEqual(reason(frame(extra: deep)), "too_deep")
        let limit = BeatFrameDecoder.maxDepth - 1  // the object itself is one level
        let justFits = "\"x\":" + String(repeating: "[", count: limit) + String(repeating: "]", count: limit)
        XCTAssertNil(reason(frame(extra: justFits)))
        XCTAssertEqual(reason(String(repeating: "[", count: 4000)), "too_deep")
        XCTAssertEqual(reason(String(repeating: "{\"a\":", count: 800)), "too_deep")
    }

    func testLargePayloadsAreRefusedUnread() {
        XCTAssertEqual(reason(String(repeating: " ", count: 1 << 20)), "too_large")
        let megabyteFrame = frame(extra: "\"pad\":\"\(String(repeating: "x", count: 1 << 20))\"")
        XCTAssertEqual(reason(megabyteFrame), "too_large")
        let justOver = frame(extra: "\"pad\":\"\(String(repeating: "x", count: BeatFrameDecoder.maxFrameBytes))\"")
        XCTAssertEqual(reason(justOver), "too_large")
        // A long string inside the limit is refused by the string bound.
        let longString = frame(extra: "\"pad\":\"\(String(repeating: "x", count: 1000))\"")
        XCTAssertEqual(reason(longString), "malformed_json")
    }

    /// Mutated and truncated frames: the decoder never traps, and whatever it
    /// accepts satisfies the typed ranges.
    func testMutationsNeverTrapAndAcceptedFramesAreInRange() {
        var rng = SeededRNG.fromEnvironment()
        let base = Array(frame(extra: #""degraded":true"#).utf8)
        let alphabet = Array("{}[]\":,-.0123456789eE+tfnul\\ax \u{7f}".utf8) + [0x00, 0xff, 0xc3]
        var accepted = 0
        for _ in 0..<20_000 {
            var bytes = base
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                let i = Int.random(in: 0..<bytes.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: bytes[i] = alphabet.randomElement(using: &rng)!
                case 1: bytes.remove(at: i)
                default: bytes.insert(alphabet.randomElement(using: &rng)!, at: i)
                }
                if bytes.isEmpty { break }
            }
            if Int.random(in: 0..<8, using: &rng) == 0 {
                bytes = Array(bytes.prefix(Int.random(in: 0...bytes.count, using: &rng)))
            }
            if case .success(let f) = BeatFrameDecoder.result(bytes) {
                accepted += 1
                XCTAssertGreaterThanOrEqual(f.beatIndex, 0, "seed \(rng.seed)")
                XCTAssertTrue((1...6000).contains(f.tempoBpm), "seed \(rng.seed)")
                XCTAssertFalse(f.hlcSuffix.isEmpty, "seed \(rng.seed)")
                XCTAssertEqual(f.windowId.utf8.count, 32, "seed \(rng.seed)")
            }
        }
        XCTAssertGreaterThan(accepted, 0, "some mutations (in unknown bytes of strings) still decode")
    }

    func testDeadlineReaderInvertsTheWriter() {
        var rng = SeededRNG.fromEnvironment()
        var out = [UInt8](repeating: 0, count: RFC3339.millisLength)
        for _ in 0..<5000 {
            let ms = Int64.random(in: RFC3339.minUnixMs...RFC3339.maxUnixMs, using: &rng)
            let n = out.withUnsafeMutableBytes { RFC3339.writeMillis(unixMs: ms, to: $0.baseAddress!) }
            XCTAssertEqual(RFC3339Reader.unixMs(String(decoding: out[0..<n], as: UTF8.self)), ms, "seed \(rng.seed)")
        }
        XCTAssertNil(RFC3339Reader.unixMs("2023-02-29T00:00:00.000Z"))
        XCTAssertEqual(RFC3339Reader.unixMs("1970-01-01T00:00:00.000Z"), 0)
    }
}
