// SimFiles.swift — a simulated disk under the service's own RaftStore.
//
// The simulator persists every Ready through `Pulse.RaftStore` (the same
// encoding, checksums and order of writes as the binary) into a `RaftFiles`
// that keeps, per file, only what a real disk would still hold after a
// power cut:
// - every completed call is durable (the store syncs before it returns:
//   `append` → fdatasync, `replace` → write temp, fsync, rename, fsync dir);
// - a crash *during* a call loses what was not synced: an append leaves any
//   prefix of its bytes (a torn last write, possibly mid-record), a replace
//   leaves the old file or the whole new one (the rename was or was not
//   made durable), and no later call happens;
// - `damage` goes beyond what the store promises to survive (a byte flipped
//   inside an earlier, acknowledged record): the next start must refuse with
//   the store's one-line reason, never start on it.
// A restart loads through `RaftStore.load`: a refusal after a crash the
// store promises to survive is a violation (`restart_from_disk`).
@testable import Pulse

/// The crash of a simulated process in the middle of a store call.
struct SimCrash: Error {}

final class SimFiles: RaftFiles {
    /// Each file's durable bytes.
    private(set) var durable: [String: [UInt8]] = [:]
    /// Calls that may still complete before the armed crash (nil: none armed).
    private var callsLeft: Int?
    private var rng: SimRNG
    /// Once a crash interrupted a call, every later call fails at once.
    private var crashed = false
    /// Damaged beyond the store's promise (`damage`): a refusal at start is expected.
    private(set) var damaged = false

    init(seed: UInt64) { rng = SimRNG(seed: seed) }

    var location: String { "sim-disk/" }

    func read(_ name: String, limit: Int) throws(DataDirError) -> [UInt8]? {
        guard let bytes = durable[name] else { return nil }
        guard bytes.count <= limit else {
            throw DataDirError(
                file: "raft/" + name, reason: "too_large", detail: "is \(bytes.count) bytes, more than \(limit)")
        }
        return bytes
    }

    func replace(_ name: String, with bytes: [UInt8]) throws {
        if try interrupted() {
            // The rename reached the disk or it did not: old bytes or all new ones.
            if rng.chance(0.5) { durable[name] = bytes }
            throw SimCrash()
        }
        durable[name] = bytes
        if crashAfter == name {
            crashAfter = nil
            crashed = true
            throw SimCrash()
        }
    }

    func append(_ name: String, _ bytes: [UInt8]) throws {
        if try interrupted() {
            durable[name, default: []] += bytes.prefix(Int(rng.range(0, Int64(bytes.count))))
            throw SimCrash()
        }
        durable[name, default: []] += bytes
    }

    /// True when this call is the one the armed crash interrupts; throws
    /// when the process already crashed.
    private func interrupted() throws -> Bool {
        if crashed { throw SimCrash() }
        guard let left = callsLeft else { return false }
        if left > 0 {
            callsLeft = left - 1
            return false
        }
        crashed = true
        return true
    }

    /// The process crashes during its next store calls: `calls` complete,
    /// the one after is interrupted.
    func armCrash(afterCalls calls: Int) {
        callsLeft = calls
        crashed = false
    }

    /// The process crashes right after its next `replace` of `name`
    /// completes: that file is durable, no later call happens.
    func crashAfterReplacing(_ name: String) { crashAfter = name }
    private var crashAfter: String?

    /// A new incarnation: the disk is as the crash left it.
    func restart() {
        callsLeft = nil
        crashAfter = nil
        crashed = false
    }

    /// Flips one byte inside the log's first record when another record
    /// follows it (bit rot in acknowledged entries: beyond what the store
    /// promises to survive, and told apart from a torn append by the intact
    /// record after it). No-op when the log holds a single record or none.
    func damage() {
        guard var log = durable["log"], log.count >= 12 else { return }
        let length = Int(log[0]) | Int(log[1]) << 8 | Int(log[2]) << 16 | Int(log[3]) << 24
        guard length >= 17, 12 + length < log.count else { return }
        let at = Int(rng.range(12, Int64(11 + length)))
        log[at] ^= 0x5A
        durable["log"] = log
        damaged = true
    }
}
