// Wire/RFC3339.swift — owns the allocation-free RFC 3339 UTC timestamp writer
// with milliseconds (`YYYY-MM-DDTHH:MM:SS.mmmZ`), built on Howard Hinnant's
// civil-from-days algorithm.

/// RFC 3339 timestamps in UTC with millisecond precision.
public enum RFC3339 {
    /// Length of every timestamp this writer produces.
    public static let millisLength = 24

    /// Smallest supported input: 0000-01-01T00:00:00.000Z.
    public static let minUnixMs: Int64 = -62_167_219_200_000
    /// Largest supported input: 9999-12-31T23:59:59.999Z.
    public static let maxUnixMs: Int64 = 253_402_300_799_999

    /// Writes `unixMs` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (exactly 24 bytes) and returns 24.
    /// Precondition: `minUnixMs <= unixMs <= maxUnixMs` (years 0000–9999; negative
    /// values before 1970 are fine and rounded towards the past).
    @_noAllocation
    public static func writeMillis(unixMs: Int64, to p: UnsafeMutableRawPointer) -> Int {
        precondition(unixMs >= minUnixMs && unixMs <= maxUnixMs, "RFC3339: year out of 0000...9999")
        let msPerDay: Int64 = 86_400_000
        let days = floorDiv(unixMs, msPerDay)
        var msOfDay = Int(unixMs - days * msPerDay)

        // civil_from_days (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097  // [0, 146096]
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365  // [0, 399]
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)  // [0, 365]
        let mp = (5 * doy + 2) / 153  // [0, 11]
        let day = Int(doy - (153 * mp + 2) / 5 + 1)  // [1, 31]
        let month = Int(mp < 10 ? mp + 3 : mp - 9)  // [1, 12]
        let year = Int(yoe + era * 400 + (month <= 2 ? 1 : 0))

        let millis = msOfDay % 1000
        msOfDay /= 1000
        let second = msOfDay % 60
        msOfDay /= 60
        let minute = msOfDay % 60
        let hour = msOfDay / 60

        AsciiWriter.writeDecimalPadded(year, width: 4, to: p)
        p.storeBytes(of: UInt8(ascii: "-"), toByteOffset: 4, as: UInt8.self)
        AsciiWriter.writeDecimalPadded(month, width: 2, to: p + 5)
        p.storeBytes(of: UInt8(ascii: "-"), toByteOffset: 7, as: UInt8.self)
        AsciiWriter.writeDecimalPadded(day, width: 2, to: p + 8)
        p.storeBytes(of: UInt8(ascii: "T"), toByteOffset: 10, as: UInt8.self)
        AsciiWriter.writeDecimalPadded(hour, width: 2, to: p + 11)
        p.storeBytes(of: UInt8(ascii: ":"), toByteOffset: 13, as: UInt8.self)
        AsciiWriter.writeDecimalPadded(minute, width: 2, to: p + 14)
        p.storeBytes(of: UInt8(ascii: ":"), toByteOffset: 16, as: UInt8.self)
        AsciiWriter.writeDecimalPadded(second, width: 2, to: p + 17)
        p.storeBytes(of: UInt8(ascii: "."), toByteOffset: 19, as: UInt8.self)
        AsciiWriter.writeDecimalPadded(millis, width: 3, to: p + 20)
        p.storeBytes(of: UInt8(ascii: "Z"), toByteOffset: 23, as: UInt8.self)
        return millisLength
    }

    /// Allocating convenience for logs, the admin API and tests.
    public static func string(unixMs: Int64) -> String {
        String(unsafeUninitializedCapacity: millisLength) { buf in
            writeMillis(unixMs: unixMs, to: UnsafeMutableRawPointer(buf.baseAddress!))
        }
    }
}
