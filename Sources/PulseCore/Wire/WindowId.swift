// Wire/WindowId.swift — owns window_id derivation (first 32 hex chars of
// SHA-256(cluster_id ":" bar_start)) and a two-slot cache that makes the beat
// path's lookup allocation-free.

import Crypto

/// `window_id` = first 32 lowercase hex characters of
/// `sha256(cluster_id + ":" + String(barStart))` (requirements §1).
public enum WindowId {
    /// Length of a window id in bytes (ASCII hex).
    public static let length = 32

    /// Writes the 32-byte window id for the bar starting at `barStart` to `p`.
    /// Allocates (hashing input); call it off the beat path, ahead of time.
    public static func compute(clusterId: String, barStart: Int64, into p: UnsafeMutableRawPointer) {
        let input = clusterId + ":" + String(barStart)
        let digest = SHA256.hash(data: Array(input.utf8))
        var i = 0
        for byte in digest {
            if i == length { break }
            _ = AsciiWriter.writeHex(UInt64(byte), minDigits: 2, to: p + i)
            i += 2
        }
    }

    /// Allocating convenience returning the window id as a String.
    public static func string(clusterId: String, barStart: Int64) -> String {
        String(unsafeUninitializedCapacity: length) { buf in
            compute(
                clusterId: clusterId, barStart: barStart, into: UnsafeMutableRawPointer(buf.baseAddress!))
            return length
        }
    }
}

/// Holds the window ids of two bars (normally the current and the next) in
/// storage allocated once, so the beat path can look them up without allocating.
///
/// Not thread-safe: owned by the loop that calls ``prepare(barStart:)`` (off
/// the beat path) and ``lookup(barStart:)`` (on it).
public final class WindowIdCache {
    /// Cluster id the ids are derived from.
    public let clusterId: String
    private let storage: UnsafeMutableRawPointer
    private var keys: (Int64?, Int64?) = (nil, nil)

    public init(clusterId: String) {
        self.clusterId = clusterId
        storage = .allocate(byteCount: 2 * WindowId.length, alignment: 8)
    }

    deinit { storage.deallocate() }

    /// Makes sure the window id of the bar starting at `barStart` is cached.
    /// If it is not, it replaces the slot holding the smaller (older) bar start.
    /// Hashes and allocates: call it ahead of time, e.g. once per bar for the next bar.
    public func prepare(barStart: Int64) {
        if keys.0 == barStart || keys.1 == barStart { return }
        let slot: Int
        switch keys {
        case (nil, _): slot = 0
        case (_, nil): slot = 1
        case (let a?, let b?): slot = a <= b ? 0 : 1
        }
        // Invalidate while writing so a failed/partial write is never served.
        if slot == 0 { keys.0 = nil } else { keys.1 = nil }
        WindowId.compute(
            clusterId: clusterId, barStart: barStart, into: storage + slot * WindowId.length)
        if slot == 0 { keys.0 = barStart } else { keys.1 = barStart }
    }

    /// The 32 cached bytes for `barStart`, or nil if it was not prepared. The
    /// pointer stays valid until a later `prepare` evicts that bar.
    @_noAllocation
    public func lookup(barStart: Int64) -> UnsafeRawPointer? {
        if keys.0 == barStart { return UnsafeRawPointer(storage) }
        if keys.1 == barStart { return UnsafeRawPointer(storage + WindowId.length) }
        return nil
    }
}
