// Wire/BeatFrameDecoder.swift — owns the one BeatFrame (`backbeat.beatframe.v1`)
// decoder: untrusted bytes from the beat subject → a typed, validated
// `DecodedBeatFrame`, or a typed refusal with a snake_case reason. The service
// (echo handling), `pulse watch`, Bench and the tests all decode through it.
//
// Guarantees (requirements §10): never traps on any input; reads at most
// `maxFrameBytes` (larger payloads are refused before parsing); nesting in
// unknown fields is bounded by `maxDepth`; integers are parsed exactly from
// their JSON text with checked arithmetic (no detour through Double, so 9.5,
// 9.0, 1e3, 1e30 and "9" are all refused where an integer is required).
// A strict RFC 8259 parser, not Foundation: PulseCore does not import it, the
// fuzzer drives this file alone, and the rules above are visible here.

/// A BeatFrame that passed every check of the decoder (requirements §2).
public struct DecodedBeatFrame: Sendable, Hashable {
    public var clusterId: String
    /// `beat_index`: 0 ... Int64.max.
    public var beatIndex: Int64
    public var downbeat: Bool
    public var phase: String
    /// The `hlc` stamp (parsed with ``HLCStamp/parse(_:)-(String)``).
    public var hlc: HLCStamp
    /// The publisher's HLC suffix (the last 4 characters of its node id).
    public var hlcSuffix: String
    /// `deadline_at` as Unix milliseconds (the text is `YYYY-MM-DDTHH:MM:SS.mmmZ`).
    public var deadlineUnixMs: Int64
    /// `tempo_bpm`: 1 ... ``BeatFrameDecoder/maxTempoBpm``.
    public var tempoBpm: Int64
    /// 32 lowercase hex digits.
    public var windowId: String
    /// The Raft term of the publisher (a single node stamps 1).
    public var term: UInt64
    /// `"degraded":true` (absent: false).
    public var degraded: Bool

    public init(
        clusterId: String, beatIndex: Int64, downbeat: Bool, phase: String, hlc: HLCStamp, hlcSuffix: String,
        deadlineUnixMs: Int64, tempoBpm: Int64, windowId: String, term: UInt64, degraded: Bool
    ) {
        self.clusterId = clusterId
        self.beatIndex = beatIndex
        self.downbeat = downbeat
        self.phase = phase
        self.hlc = hlc
        self.hlcSuffix = hlcSuffix
        self.deadlineUnixMs = deadlineUnixMs
        self.tempoBpm = tempoBpm
        self.windowId = windowId
        self.term = term
        self.degraded = degraded
    }

    /// The beat's scheduled instant in Unix ns as the frame states it:
    /// deadline minus one nominal period (exact when 60000/bpm is a whole
    /// number of milliseconds). Checked: nil if it would overflow.
    public var scheduledNs: Int64? {
        let (deadlineNs, o1) = deadlineUnixMs.multipliedReportingOverflow(by: 1_000_000)
        let (ns, o2) = deadlineNs.subtractingReportingOverflow(60_000_000_000 / tempoBpm)
        return o1 || o2 ? nil : ns
    }
}

/// The keys of a BeatFrame, as spelled on the wire.
public enum BeatFrameField: String, Sendable, CaseIterable {
    case type, cluster_id, beat_index, downbeat, phase, hlc, deadline_at, tempo_bpm, window_id, term, degraded
}

/// Why bytes were refused as a BeatFrame. ``reason`` is the snake_case code
/// counted in `backbeat_rejected_input_total{surface="beat_subject",reason}`:
/// a closed set (the cases below, one `bad_<field>` per field).
public enum BeatFrameDecodeError: Error, Sendable, Hashable, CustomStringConvertible {
    /// No bytes (or only whitespace).
    case empty
    /// More than ``BeatFrameDecoder/maxFrameBytes``.
    case tooLarge
    /// Not valid JSON (or invalid UTF-8 in a string).
    case malformedJSON
    /// Valid JSON so far, but not an object.
    case notAnObject
    /// Unknown fields nested deeper than ``BeatFrameDecoder/maxDepth``.
    case tooDeep
    /// `type` is not `backbeat.beatframe.v1`.
    case wrongType
    /// A required field is absent.
    case missingField(BeatFrameField)
    /// A field appears twice.
    case duplicateField(BeatFrameField)
    /// A field has the wrong JSON type or a value out of its range.
    case invalidField(BeatFrameField)

    /// The metric label for this refusal.
    public var reason: String {
        switch self {
        case .empty: return "empty"
        case .tooLarge: return "too_large"
        case .malformedJSON: return "malformed_json"
        case .notAnObject: return "not_an_object"
        case .tooDeep: return "too_deep"
        case .wrongType: return "wrong_type"
        case .missingField: return "missing_field"
        case .duplicateField: return "duplicate_field"
        case .invalidField(let field): return "bad_" + field.rawValue
        }
    }

    public var description: String {
        switch self {
        case .missingField(let field): return "missing_field (\(field.rawValue))"
        case .duplicateField(let field): return "duplicate_field (\(field.rawValue))"
        default: return reason
        }
    }
}

/// Decodes `backbeat.beatframe.v1` frames strictly. Stateless; safe from any thread.
public enum BeatFrameDecoder {
    /// Largest payload considered: the largest frame an encoder can produce is
    /// under 700 bytes (cluster id ≤ 128 bytes, phase names ≤ 64 bytes).
    public static let maxFrameBytes = 4096
    /// Nesting allowed inside unknown fields (a frame itself is flat).
    public static let maxDepth = 16
    /// Longest string accepted in any field (cluster id, phase, hlc, ...).
    public static let maxStringBytes = 256
    /// The highest tempo a node can be configured for (`-max-bpm` ≤ 6000).
    public static let maxTempoBpm: Int64 = 6000
    /// The `type` of every frame this decoder accepts.
    public static let frameType = "backbeat.beatframe.v1"

    /// Decodes one frame from `bytes`.
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws(BeatFrameDecodeError) -> DecodedBeatFrame {
        guard bytes.count <= maxFrameBytes else { throw .tooLarge }
        var parser = FrameParser(bytes: bytes)
        return try parser.frame()
    }

    /// Decodes one frame from `bytes`.
    public static func decode(_ bytes: [UInt8]) throws(BeatFrameDecodeError) -> DecodedBeatFrame {
        guard bytes.count <= maxFrameBytes else { throw .tooLarge }
        let outcome = bytes.withUnsafeBytes { result($0) }
        return try outcome.get()
    }

    /// `decode` as a `Result`, for callers that switch on the outcome.
    public static func result(_ bytes: UnsafeRawBufferPointer) -> Result<DecodedBeatFrame, BeatFrameDecodeError> {
        do throws(BeatFrameDecodeError) {
            return .success(try decode(bytes))
        } catch {
            return .failure(error)
        }
    }

    /// `decode` as a `Result`, for callers that switch on the outcome.
    public static func result(_ bytes: [UInt8]) -> Result<DecodedBeatFrame, BeatFrameDecodeError> {
        bytes.withUnsafeBytes { result($0) }
    }
}

// MARK: - The parser

/// A cursor over the payload. Every read is bounds-checked against `end`.
private struct FrameParser {
    let bytes: UnsafeRawBufferPointer
    var i = 0

    init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    /// The next byte, or nil at the end.
    private var peek: UInt8? { i < bytes.count ? bytes[i] : nil }

    private mutating func skipWhitespace() {
        while let b = peek, b == 0x20 || b == 0x09 || b == 0x0a || b == 0x0d { i += 1 }
    }

    private mutating func expect(_ byte: UInt8) throws(BeatFrameDecodeError) {
        guard peek == byte else { throw .malformedJSON }
        i += 1
    }

    /// The whole payload: one object, then only whitespace.
    mutating func frame() throws(BeatFrameDecodeError) -> DecodedBeatFrame {
        skipWhitespace()
        guard let first = peek else { throw .empty }
        guard first == UInt8(ascii: "{") else {
            // Another JSON value is "not an object"; anything else is not JSON.
            try skipValue(depth: 0)
            skipWhitespace()
            throw peek == nil ? .notAnObject : .malformedJSON
        }
        i += 1
        var fields = Fields()
        skipWhitespace()
        if peek == UInt8(ascii: "}") {
            i += 1
        } else {
            while true {
                skipWhitespace()
                let key = try string()
                skipWhitespace()
                try expect(UInt8(ascii: ":"))
                skipWhitespace()
                try field(key, into: &fields)
                skipWhitespace()
                if peek == UInt8(ascii: ",") {
                    i += 1
                    continue
                }
                try expect(UInt8(ascii: "}"))
                break
            }
        }
        skipWhitespace()
        guard peek == nil else { throw .malformedJSON }
        return try fields.frame()
    }

    /// Reads the value of `key` into `fields`: known keys are typed and
    /// range-checked, unknown keys are skipped (bounded depth).
    private mutating func field(_ key: [UInt8], into fields: inout Fields) throws(BeatFrameDecodeError) {
        guard let name = String(validating: key), let field = BeatFrameField(rawValue: name) else {
            try skipValue(depth: 1)
            return
        }
        guard !fields.seen.contains(field) else { throw .duplicateField(field) }
        fields.seen.insert(field)
        switch field {
        case .type:
            // Any other value, string or not, is another message type.
            guard peek == UInt8(ascii: "\""), try stringValue(field) == BeatFrameDecoder.frameType else {
                throw .wrongType
            }
        case .cluster_id:
            let text = try stringValue(field)
            guard !text.isEmpty, text.utf8.count <= 128 else { throw .invalidField(field) }
            fields.clusterId = text
        case .beat_index:
            let value = try integer(field)
            guard !value.negative, value.magnitude <= UInt64(Int64.max) else { throw .invalidField(field) }
            fields.beatIndex = Int64(value.magnitude)
        case .downbeat:
            fields.downbeat = try bool(field)
        case .phase:
            let text = try stringValue(field)
            guard !text.isEmpty else { throw .invalidField(field) }
            fields.phase = text
        case .hlc:
            guard let parsed = HLCStamp.parse(try stringValue(field)), !parsed.suffix.isEmpty else {
                throw .invalidField(field)
            }
            fields.hlc = parsed.stamp
            fields.hlcSuffix = String(parsed.suffix)
        case .deadline_at:
            guard let ms = RFC3339Reader.unixMs(try stringValue(field)) else { throw .invalidField(field) }
            fields.deadlineUnixMs = ms
        case .tempo_bpm:
            let value = try integer(field)
            guard !value.negative, value.magnitude >= 1, value.magnitude <= UInt64(BeatFrameDecoder.maxTempoBpm) else {
                throw .invalidField(field)
            }
            fields.tempoBpm = Int64(value.magnitude)
        case .window_id:
            let text = try stringValue(field)
            guard text.utf8.count == 32,
                text.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) })
            else { throw .invalidField(field) }
            fields.windowId = text
        case .term:
            let value = try integer(field)
            guard !value.negative else { throw .invalidField(field) }
            fields.term = value.magnitude
        case .degraded:
            fields.degraded = try bool(field)
        }
    }

    // MARK: Typed values

    /// A string value (valid UTF-8); another JSON type is an invalid `field`.
    private mutating func stringValue(_ field: BeatFrameField) throws(BeatFrameDecodeError) -> String {
        guard peek == UInt8(ascii: "\"") else { throw .invalidField(field) }
        let raw = try string()
        guard let text = String(validating: raw) else { throw .malformedJSON }
        return text
    }

    private mutating func bool(_ field: BeatFrameField) throws(BeatFrameDecodeError) -> Bool {
        if literal("true") { return true }
        if literal("false") { return false }
        throw .invalidField(field)
    }

    /// An integer literal exactly: `-?(0|[1-9][0-9]*)` with no fraction or
    /// exponent, magnitude ≤ UInt64.max (checked). Anything else → invalid.
    private mutating func integer(_ field: BeatFrameField) throws(BeatFrameDecodeError) -> (
        negative: Bool, magnitude: UInt64
    ) {
        var negative = false
        if peek == UInt8(ascii: "-") {
            negative = true
            i += 1
        }
        guard let first = peek, first >= 0x30, first <= 0x39 else { throw .invalidField(field) }
        var magnitude: UInt64 = 0
        var digits = 0
        while let b = peek, b >= 0x30, b <= 0x39 {
            let (times10, o1) = magnitude.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.addingReportingOverflow(UInt64(b - 0x30))
            guard !o1, !o2 else { throw .invalidField(field) }
            magnitude = sum
            digits += 1
            i += 1
        }
        if first == 0x30 && digits > 1 { throw .malformedJSON }  // leading zero
        if let b = peek, b == UInt8(ascii: ".") || b == UInt8(ascii: "e") || b == UInt8(ascii: "E") {
            throw .invalidField(field)  // fractional or exponent form: not an integer literal
        }
        return (negative, magnitude)
    }

    /// Consumes `word` if it is next; whether it was.
    private mutating func literal(_ word: StaticString) -> Bool {
        let n = word.utf8CodeUnitCount
        guard bytes.count - i >= n else { return false }
        let start = word.utf8Start
        for j in 0..<n where bytes[i + j] != start[j] { return false }
        i += n
        return true
    }

    // MARK: Generic JSON

    /// A JSON string's bytes (escapes decoded, UTF-8 as given); at most
    /// `maxStringBytes` bytes. The opening quote must be next.
    private mutating func string() throws(BeatFrameDecodeError) -> [UInt8] {
        try expect(UInt8(ascii: "\""))
        var out: [UInt8] = []
        while true {
            guard let b = peek else { throw .malformedJSON }
            i += 1
            switch b {
            case UInt8(ascii: "\""):
                return out
            case UInt8(ascii: "\\"):
                guard let e = peek else { throw .malformedJSON }
                i += 1
                switch e {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0c)
                case UInt8(ascii: "n"): out.append(0x0a)
                case UInt8(ascii: "r"): out.append(0x0d)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"): try unicodeEscape(into: &out)
                default: throw .malformedJSON
                }
            case 0..<0x20:
                throw .malformedJSON  // raw control characters are not allowed in JSON strings
            default:
                out.append(b)
            }
            guard out.count <= BeatFrameDecoder.maxStringBytes else { throw .malformedJSON }
        }
    }

    /// `\uXXXX` (after the `u`), with surrogate pairs; lone surrogates are refused.
    private mutating func unicodeEscape(into out: inout [UInt8]) throws(BeatFrameDecodeError) {
        var scalar = try hex4()
        if scalar >= 0xD800 && scalar <= 0xDBFF {
            guard literal("\\u") else { throw .malformedJSON }
            let low = try hex4()
            guard low >= 0xDC00 && low <= 0xDFFF else { throw .malformedJSON }
            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
        } else if scalar >= 0xDC00 && scalar <= 0xDFFF {
            throw .malformedJSON
        }
        guard let unicode = Unicode.Scalar(scalar) else { throw .malformedJSON }
        out.append(contentsOf: UTF8.encode(unicode).map { Array($0) } ?? [])
    }

    private mutating func hex4() throws(BeatFrameDecodeError) -> UInt32 {
        guard bytes.count - i >= 4 else { throw .malformedJSON }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[i]
            let d: UInt8
            switch b {
            case 0x30...0x39: d = b - 0x30
            case 0x61...0x66: d = b - 0x61 + 10
            case 0x41...0x46: d = b - 0x41 + 10
            default: throw .malformedJSON
            }
            v = v << 4 | UInt32(d)
            i += 1
        }
        return v
    }

    /// Skips any JSON value, validating it; containers nest at most `maxDepth`.
    private mutating func skipValue(depth: Int) throws(BeatFrameDecodeError) {
        guard let b = peek else { throw .malformedJSON }
        switch b {
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            guard depth < BeatFrameDecoder.maxDepth else { throw .tooDeep }
            let close = b == UInt8(ascii: "{") ? UInt8(ascii: "}") : UInt8(ascii: "]")
            i += 1
            skipWhitespace()
            if peek == close {
                i += 1
                return
            }
            while true {
                skipWhitespace()
                if close == UInt8(ascii: "}") {
                    _ = try string()
                    skipWhitespace()
                    try expect(UInt8(ascii: ":"))
                    skipWhitespace()
                }
                try skipValue(depth: depth + 1)
                skipWhitespace()
                if peek == UInt8(ascii: ",") {
                    i += 1
                    continue
                }
                try expect(close)
                return
            }
        case UInt8(ascii: "\""):
            _ = try string()
        case UInt8(ascii: "t"), UInt8(ascii: "f"), UInt8(ascii: "n"):
            guard literal("true") || literal("false") || literal("null") else { throw .malformedJSON }
        default:
            try skipNumber()
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    private mutating func skipNumber() throws(BeatFrameDecodeError) {
        if peek == UInt8(ascii: "-") { i += 1 }
        guard let first = peek, first >= 0x30, first <= 0x39 else { throw .malformedJSON }
        if first == 0x30 {
            i += 1
        } else {
            try digits()
        }
        if peek == UInt8(ascii: ".") {
            i += 1
            try digits()
        }
        if let e = peek, e == UInt8(ascii: "e") || e == UInt8(ascii: "E") {
            i += 1
            if let s = peek, s == UInt8(ascii: "+") || s == UInt8(ascii: "-") { i += 1 }
            try digits()
        }
    }

    /// One or more decimal digits.
    private mutating func digits() throws(BeatFrameDecodeError) {
        guard let b = peek, b >= 0x30, b <= 0x39 else { throw .malformedJSON }
        while let b = peek, b >= 0x30, b <= 0x39 { i += 1 }
    }
}

/// The fields read so far; `frame()` checks that every required one is there.
private struct Fields {
    var seen = Set<BeatFrameField>()
    var clusterId = ""
    var beatIndex: Int64 = 0
    var downbeat = false
    var phase = ""
    var hlc = HLCStamp.zero
    var hlcSuffix = ""
    var deadlineUnixMs: Int64 = 0
    var tempoBpm: Int64 = 0
    var windowId = ""
    var term: UInt64 = 0
    var degraded = false

    func frame() throws(BeatFrameDecodeError) -> DecodedBeatFrame {
        for field in BeatFrameField.allCases where field != .degraded && !seen.contains(field) {
            throw .missingField(field)
        }
        return DecodedBeatFrame(
            clusterId: clusterId, beatIndex: beatIndex, downbeat: downbeat, phase: phase, hlc: hlc,
            hlcSuffix: hlcSuffix, deadlineUnixMs: deadlineUnixMs, tempoBpm: tempoBpm, windowId: windowId, term: term,
            degraded: degraded)
    }
}

extension String {
    /// The string these bytes spell if they are valid UTF-8, else nil (no repair).
    fileprivate init?(validating bytes: [UInt8]) {
        let text = String(decoding: bytes, as: UTF8.self)
        guard text.utf8.elementsEqual(bytes) else { return nil }
        self = text
    }
}

/// Reads the timestamps ``RFC3339`` writes: exactly `YYYY-MM-DDTHH:MM:SS.mmmZ`.
enum RFC3339Reader {
    /// Unix milliseconds of `text`, or nil unless it is exactly the 24-byte
    /// UTC form with valid month, day (for the month and year), hour, minute
    /// and second (no leap second).
    static func unixMs(_ text: String) -> Int64? {
        let b = Array(text.utf8)
        guard b.count == RFC3339.millisLength, b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-"),
            b[10] == UInt8(ascii: "T"), b[13] == UInt8(ascii: ":"), b[16] == UInt8(ascii: ":"),
            b[19] == UInt8(ascii: "."), b[23] == UInt8(ascii: "Z")
        else { return nil }
        func number(_ from: Int, _ count: Int) -> Int64? {
            var v: Int64 = 0
            for j in from..<(from + count) {
                guard b[j] >= 0x30, b[j] <= 0x39 else { return nil }
                v = v * 10 + Int64(b[j] - 0x30)
            }
            return v
        }
        guard let year = number(0, 4), let month = number(5, 2), let day = number(8, 2), let hour = number(11, 2),
            let minute = number(14, 2), let second = number(17, 2), let millis = number(20, 3),
            (1...12).contains(month), hour < 24, minute < 60, second < 60
        else { return nil }
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
        let monthDays: [Int64] = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        guard day >= 1, day <= monthDays[Int(month - 1)] else { return nil }
        // days_from_civil (H. Hinnant), the inverse of the writer's civil_from_days.
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = month > 2 ? month - 3 : month + 9
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        return ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis
    }
}
