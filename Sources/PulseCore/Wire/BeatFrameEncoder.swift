// Wire/BeatFrameEncoder.swift — owns the BeatFrame (`backbeat.beatframe.v1`)
// JSON encoder: all configured strings are JSON-escaped once at start-up into
// buffers it owns, and `encode` writes a frame into a caller buffer without
// allocating.

/// Encodes BeatFrames as compact JSON (requirements §2), fields in the order
/// `type, cluster_id, beat_index, downbeat, phase, hlc, deadline_at, tempo_bpm,
/// window_id, term` and, only when degraded, `"degraded":true`.
///
/// A `final class` rather than a struct: it owns raw buffers allocated once in
/// `init` and freed in `deinit`; reference semantics make that ownership
/// unambiguous (copies of a struct would share and could double-free the
/// pointers) and `final` keeps `encode` a direct call. After `init` nothing is
/// mutated, so sharing one encoder across threads is safe (`@unchecked Sendable`).
public final class BeatFrameEncoder: @unchecked Sendable {
    /// Cluster id as configured.
    public let clusterId: String
    /// Phase names as configured.
    public let phases: [String]
    /// The HLC node suffix: the last 4 characters of the node id (all of it if shorter).
    public let hlcSuffix: String
    /// Upper bound on the size of any frame this encoder can produce; size the
    /// caller's buffer with it.
    public let maxFrameBytes: Int

    /// All pre-escaped segments, back to back.
    private let storage: UnsafeMutableRawBufferPointer
    /// `(offset, length)` of each phase segment in `storage`, `2 * phases.count` entries.
    private let phaseTable: UnsafeMutablePointer<Int>
    private let phaseCount: Int

    // (offset, length) of the fixed segments in `storage`.
    private let prefixOff: Int, prefixLen: Int
    private let trueOff: Int, trueLen: Int
    private let falseOff: Int, falseLen: Int
    private let suffixOff: Int, suffixLen: Int
    private let tempoOff: Int, tempoLen: Int
    private let windowOff: Int, windowLen: Int
    private let termOff: Int, termLen: Int
    private let degradedOff: Int, degradedLen: Int
    /// Bytes every frame has regardless of its values.
    private let fixedLen: Int

    /// Length of a window id (lowercase hex).
    public static let windowIdLength = 32

    /// Builds the encoder once at start-up. Preconditions: `phases` is not empty.
    public init(clusterId: String, phases: [String], nodeId: String) {
        precondition(!phases.isEmpty, "at least one phase is required")
        self.clusterId = clusterId
        self.phases = phases
        self.hlcSuffix = String(nodeId.suffix(4))

        var bytes: [UInt8] = []
        func append(_ s: String) -> (Int, Int) {
            let off = bytes.count
            bytes.append(contentsOf: s.utf8)
            return (off, bytes.count - off)
        }
        func append(_ b: [UInt8]) -> (Int, Int) {
            let off = bytes.count
            bytes.append(contentsOf: b)
            return (off, bytes.count - off)
        }
        let esc = JSONEscape.quoted
        (prefixOff, prefixLen) = append(
            Array(#"{"type":"backbeat.beatframe.v1","cluster_id":"#.utf8) + esc(clusterId)
                + Array(#","beat_index":"#.utf8))
        (trueOff, trueLen) = append(#","downbeat":true"#)
        (falseOff, falseLen) = append(#","downbeat":false"#)
        var table: [(Int, Int)] = []
        for phase in phases {
            table.append(append(Array(#","phase":"#.utf8) + esc(phase) + Array(#","hlc":""#.utf8)))
        }
        // The suffix is escaped without quotes: it sits inside the hlc string.
        (suffixOff, suffixLen) = append(
            [UInt8(ascii: ":")] + JSONEscape.escaped(hlcSuffix) + Array(#"","deadline_at":""#.utf8))
        (tempoOff, tempoLen) = append(#"","tempo_bpm":"#)
        (windowOff, windowLen) = append(#","window_id":""#)
        (termOff, termLen) = append(#"","term":"#)
        (degradedOff, degradedLen) = append(#","degraded":true"#)
        // The closing brace is written directly.

        phaseCount = phases.count
        phaseTable = .allocate(capacity: 2 * phases.count)
        for (i, (off, len)) in table.enumerated() {
            phaseTable[2 * i] = off
            phaseTable[2 * i + 1] = len
        }
        storage = .allocate(byteCount: bytes.count, alignment: 8)
        storage.copyBytes(from: bytes)

        fixedLen =
            prefixLen + suffixLen + RFC3339.millisLength + tempoLen + windowLen
            + Self.windowIdLength + termLen
            + 1  // ":" between the hlc ms and counter
            + 1  // "}"
        let maxPhaseLen = table.map { $0.1 }.max()!
        maxFrameBytes =
            fixedLen
            + 20  // beat_index: Int64, sign included
            + max(trueLen, falseLen) + maxPhaseLen
            + 16 + 8  // hlc ms and counter hex digits
            + 20  // tempo_bpm: Int64
            + 20  // term: UInt64
            + degradedLen
    }

    deinit {
        storage.deallocate()
        phaseTable.deallocate()
    }

    /// Writes one frame into `buffer` and returns the bytes written, or -1 if
    /// the buffer is too small (then nothing is written). Never writes past
    /// `buffer`. Preconditions: `0 <= phaseIndex < phases.count`,
    /// `hlc.wallMs >= 0`, `deadlineUnixMs` within ``RFC3339`` range, and
    /// `windowId` points at 32 ASCII bytes.
    @_noAllocation
    public func encode(
        into buffer: UnsafeMutableRawBufferPointer,
        beatIndex: Int64,
        downbeat: Bool,
        phaseIndex: Int,
        hlc: HLCStamp,
        deadlineUnixMs: Int64,
        tempoBpm: Int64,
        windowId: UnsafeRawPointer,
        term: UInt64,
        degraded: Bool
    ) -> Int {
        // Read stored properties into locals first: autoclosures (`precondition`,
        // `||`) capturing `self` would retain/release it, which @_noAllocation rejects.
        let phaseCount = self.phaseCount
        precondition(phaseIndex >= 0 && phaseIndex < phaseCount, "phase index out of range")
        precondition(hlc.wallMs >= 0, "HLC wallMs must be non-negative")
        let phaseOff = phaseTable[2 * phaseIndex]
        let phaseLen = phaseTable[2 * phaseIndex + 1]
        let ms = UInt64(hlc.wallMs)
        let counter = UInt64(hlc.counter)
        let total =
            fixedLen + AsciiWriter.decimalLength(beatIndex) + (downbeat ? trueLen : falseLen)
            + phaseLen + AsciiWriter.hexLength(ms) + AsciiWriter.hexLength(counter, minDigits: 4)
            + AsciiWriter.decimalLength(tempoBpm) + AsciiWriter.decimalLength(term)
            + (degraded ? degradedLen : 0)
        guard total <= buffer.count, let out = buffer.baseAddress else { return -1 }

        let seg = UnsafeRawPointer(storage.baseAddress!)
        var n = 0
        n += AsciiWriter.copy(seg + prefixOff, count: prefixLen, to: out + n)
        n += AsciiWriter.writeDecimal(beatIndex, to: out + n)
        if downbeat {
            n += AsciiWriter.copy(seg + trueOff, count: trueLen, to: out + n)
        } else {
            n += AsciiWriter.copy(seg + falseOff, count: falseLen, to: out + n)
        }
        n += AsciiWriter.copy(seg + phaseOff, count: phaseLen, to: out + n)
        n += AsciiWriter.writeHex(ms, to: out + n)
        out.storeBytes(of: UInt8(ascii: ":"), toByteOffset: n, as: UInt8.self)
        n += 1
        n += AsciiWriter.writeHex(counter, minDigits: 4, to: out + n)
        n += AsciiWriter.copy(seg + suffixOff, count: suffixLen, to: out + n)
        n += RFC3339.writeMillis(unixMs: deadlineUnixMs, to: out + n)
        n += AsciiWriter.copy(seg + tempoOff, count: tempoLen, to: out + n)
        n += AsciiWriter.writeDecimal(tempoBpm, to: out + n)
        n += AsciiWriter.copy(seg + windowOff, count: windowLen, to: out + n)
        n += AsciiWriter.copy(windowId, count: Self.windowIdLength, to: out + n)
        n += AsciiWriter.copy(seg + termOff, count: termLen, to: out + n)
        n += AsciiWriter.writeDecimal(term, to: out + n)
        if degraded {
            n += AsciiWriter.copy(seg + degradedOff, count: degradedLen, to: out + n)
        }
        out.storeBytes(of: UInt8(ascii: "}"), toByteOffset: n, as: UInt8.self)
        n += 1
        assert(n == total, "BeatFrameEncoder length mismatch")
        return n
    }
}

/// JSON string escaping (RFC 8259), used once at start-up for configured strings.
public enum JSONEscape {
    /// UTF-8 of `s` escaped for use inside a JSON string, without quotes:
    /// `"` and `\` are backslash-escaped, `\b \f \n \r \t` use their short
    /// forms, other control characters below 0x20 become `\u00XX`; everything
    /// else (including non-ASCII UTF-8 and DEL) passes through unchanged.
    public static func escaped(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count)
        let hex = Array("0123456789abcdef".utf8)
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0x08: out += [UInt8(ascii: "\\"), UInt8(ascii: "b")]
            case 0x0c: out += [UInt8(ascii: "\\"), UInt8(ascii: "f")]
            case 0x0a: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case 0x0d: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case 0x09: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0..<0x20:
                out += Array(#"\u00"#.utf8)
                out += [hex[Int(b >> 4)], hex[Int(b & 0xf)]]
            default: out.append(b)
            }
        }
        return out
    }

    /// ``escaped(_:)`` wrapped in double quotes.
    public static func quoted(_ s: String) -> [UInt8] {
        [UInt8(ascii: "\"")] + escaped(s) + [UInt8(ascii: "\"")]
    }
}
