// Wire/AsciiWriter.swift — owns the allocation-free integer-to-ASCII writers
// (decimal, lowercase hex, zero-padded) and their exact length functions, used
// by the RFC 3339 writer and the BeatFrame encoder.

/// Allocation-free ASCII number writers. Every `write*` function writes exactly
/// the number of bytes the matching `*Length` function returns, and returns it.
/// The caller guarantees the destination has room.
public enum AsciiWriter {
    /// Number of decimal digits of `v` (1 for 0).
    @_noAllocation
    public static func decimalLength(_ v: UInt64) -> Int {
        var n = 1
        var x = v
        while x >= 10 {
            x /= 10
            n += 1
        }
        return n
    }

    /// Length of `v` in decimal, including a leading `-` if negative.
    @_noAllocation
    public static func decimalLength(_ v: Int64) -> Int {
        v < 0 ? 1 + decimalLength(v.magnitude) : decimalLength(UInt64(v))
    }

    /// Writes `v` in decimal; returns the bytes written.
    @_noAllocation
    public static func writeDecimal(_ v: UInt64, to p: UnsafeMutableRawPointer) -> Int {
        let n = decimalLength(v)
        var x = v
        var i = n
        repeat {
            i -= 1
            p.storeBytes(of: UInt8(truncatingIfNeeded: x % 10) &+ 0x30, toByteOffset: i, as: UInt8.self)
            x /= 10
        } while i > 0
        return n
    }

    /// Writes `v` in decimal with a leading `-` if negative; returns the bytes written.
    @_noAllocation
    public static func writeDecimal(_ v: Int64, to p: UnsafeMutableRawPointer) -> Int {
        if v < 0 {
            p.storeBytes(of: UInt8(ascii: "-"), as: UInt8.self)
            return 1 + writeDecimal(v.magnitude, to: p + 1)
        }
        return writeDecimal(UInt64(v), to: p)
    }

    /// Writes `v` (0 ≤ v < 10^width) zero-padded to exactly `width` digits.
    @_noAllocation
    public static func writeDecimalPadded(_ v: Int, width: Int, to p: UnsafeMutableRawPointer) {
        var x = v
        var i = width
        while i > 0 {
            i -= 1
            p.storeBytes(of: UInt8(truncatingIfNeeded: x % 10) &+ 0x30, toByteOffset: i, as: UInt8.self)
            x /= 10
        }
    }

    /// Number of lowercase hex digits of `v`, at least `minDigits`.
    @_noAllocation
    public static func hexLength(_ v: UInt64, minDigits: Int = 1) -> Int {
        let significant = v == 0 ? 1 : (64 - v.leadingZeroBitCount + 3) / 4
        return significant > minDigits ? significant : minDigits
    }

    /// Writes `v` in lowercase hex, zero-padded to at least `minDigits`; returns the bytes written.
    @_noAllocation
    public static func writeHex(_ v: UInt64, minDigits: Int = 1, to p: UnsafeMutableRawPointer) -> Int {
        let n = hexLength(v, minDigits: minDigits)
        var x = v
        var i = n
        while i > 0 {
            i -= 1
            let d = UInt8(truncatingIfNeeded: x & 0xf)
            p.storeBytes(of: d < 10 ? d &+ 0x30 : d &+ 0x57, toByteOffset: i, as: UInt8.self)
            x >>= 4
        }
        return n
    }

    /// Copies `count` bytes from `src` to `dst`; returns `count`.
    @_noAllocation
    public static func copy(_ src: UnsafeRawPointer, count: Int, to dst: UnsafeMutableRawPointer)
        -> Int
    {
        dst.copyMemory(from: src, byteCount: count)
        return count
    }
}
