// Backup/BackupFile.swift — owns the backup file format
// (`backbeat.backup.v1`, docs/operations.md#backup-and-restore): the
// committed timeline of a cluster as one small JSON object, its checksum,
// and the pure validating parser that `pulse restore` runs before it writes
// anything (any bytes in, a typed value or a one-line refusal out, never a
// trap, so a libFuzzer harness can run it too).
//
// Guarantees:
// - `parse` accepts exactly what `encoded()` can produce for a valid
//   timeline: the format version, the checksum, every field's type and
//   range (the epoch and the pending change through `TempoEpoch.validated`,
//   as a data dir's files are), no unknown field.
// - The checksum is the SHA-256 of the file's canonical form: the object
//   without `checksum`, keys sorted, no whitespace, slashes and non-ASCII
//   unescaped (what Python's `json.dumps(..., sort_keys=True,
//   separators=(",", ":"), ensure_ascii=False)` prints), so any changed
//   value is refused while re-indenting the file is not.
// - A node never hands out a file `parse` would refuse (`encoded()` runs
//   the same validation first).
import Crypto
import Foundation
import PulseCore
import PulsePolicy
import Raft

/// Why a backup file cannot be used: a snake_case reason and one line.
public struct BackupError: Error, Equatable, CustomStringConvertible, Sendable {
    /// A small closed set: `too_large`, `bad_json`, `not_a_backup`,
    /// `unsupported_version`, `missing_field`, `wrong_type`, `unknown_field`,
    /// `bad_checksum`, `bad_cluster_id`, `bad_node_id`, `bar_out_of_range`,
    /// `bad_phases`, `bpm_out_of_range`, `beat_out_of_range`,
    /// `instant_out_of_range`, `bad_pending`, `justification_too_long`,
    /// `term_out_of_range`, `index_out_of_range`, `bad_taken_at`.
    public var reason: String
    /// What is wrong, one line.
    public var detail: String

    public init(reason: String, detail: String) {
        self.reason = reason
        self.detail = DataDirFiles.oneLine(detail)
    }

    public var description: String { detail }
}

/// A backup of a cluster's committed timeline: what `GET /backup` answers,
/// what `pulse backup` writes and `pulse restore` reads.
public struct BackupFile: Equatable, Sendable {
    /// The format this build writes and reads; a later version gets a new name.
    public static let format = "backbeat.backup.v1"
    /// Largest file accepted (a backup is well under 2 KiB).
    public static let maxBytes = 64 << 10
    /// A Raft term or index at or above this is refused (as in the data dir).
    public static let absurd: UInt64 = RaftStore.absurd

    /// The epoch in force: beat `startBeat` at `startNs` (Unix ns), then `bpm`.
    public struct Epoch: Equatable, Sendable {
        public var startBeat: Int64
        public var startNs: Int64
        public var bpm: Int64
    }

    /// The latest committed tempo change (its downbeat may have passed).
    public struct Pending: Equatable, Sendable {
        public var atBeat: Int64
        public var bpm: Int64
        public var justification: String
    }

    public var clusterId: String
    /// The node that answered (the leader, or the single node).
    public var nodeId: String
    public var bar: Int
    public var phases: [String]
    public var epoch: Epoch
    public var pending: Pending?
    /// The Raft term of the node when it answered (a single node: 1).
    public var term: UInt64
    /// The Raft log index the state reflects (a single node: 0, no log).
    public var index: UInt64
    /// The highest beat index the node had published or seen, if any.
    public var lastBeat: Int64?
    /// When the backup was taken, on the timeline's clock (Unix ns).
    public var takenAtNs: Int64

    // MARK: encoding

    /// The file's bytes: sorted, indented JSON with its checksum, and a final
    /// newline. Refuses (never writes) a value `parse` would refuse.
    public func encoded() throws(BackupError) -> [UInt8] {
        try validate()
        var wire = self.wire
        wire.checksum = Self.checksum(of: wire)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(wire) else {
            throw BackupError(reason: "bad_json", detail: "the backup cannot be encoded")
        }
        return [UInt8](data) + [UInt8(ascii: "\n")]
    }

    /// `sha256:` and the lowercase hex SHA-256 of the canonical form.
    static func checksum(of wire: Wire) -> String {
        var canonical = wire
        canonical.checksum = nil
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let bytes = (try? encoder.encode(canonical)) ?? Data()
        return "sha256:" + SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }

    private var wire: Wire {
        Wire(
            format: Self.format, cluster_id: clusterId, node_id: nodeId, bar: bar, phases: phases,
            epoch: .init(start_beat: epoch.startBeat, start_ns: epoch.startNs, bpm: epoch.bpm),
            pending: pending.map { .init(at_beat: $0.atBeat, bpm: $0.bpm, justification: $0.justification) },
            term: term, index: index, last_beat: lastBeat, taken_at_ns: takenAtNs,
            taken_at: RFC3339.string(unixMs: takenAtNs / 1_000_000), checksum: nil)
    }

    // MARK: parsing (any bytes; never traps)

    /// Parses and validates a backup file completely: size, JSON shape (every
    /// field, no other), format version, checksum, then every value's range.
    public static func parse(_ bytes: [UInt8]) throws(BackupError) -> BackupFile {
        guard bytes.count <= maxBytes else {
            throw BackupError(reason: "too_large", detail: "is \(bytes.count) bytes, more than \(maxBytes)")
        }
        // The version first: a later format may have other fields.
        let probe: FormatProbe
        do {
            probe = try JSONDecoder().decode(FormatProbe.self, from: Data(bytes))
        } catch {
            throw BackupError(reason: "bad_json", detail: "is not a JSON object")
        }
        guard let format = probe.format else {
            throw BackupError(reason: "not_a_backup", detail: "has no 'format' field: not a pulse backup")
        }
        guard format == Self.format else {
            let known = format.hasPrefix("backbeat.backup.")
            throw BackupError(
                reason: known ? "unsupported_version" : "not_a_backup",
                detail: known
                    ? "is format '\(format)'; this build reads \(Self.format)"
                    : "has format '\(format)': not a pulse backup")
        }
        let wire: Wire
        do {
            wire = try JSONDecoder().decode(Wire.self, from: Data(bytes))
        } catch let error as BackupError {
            throw error
        } catch {
            let failure = DataDirFiles.decodingFailure(file: "backup", error)
            throw BackupError(reason: failure.reason, detail: failure.detail)
        }
        guard let given = wire.checksum, given == checksum(of: wire) else {
            throw BackupError(
                reason: "bad_checksum",
                detail: "checksum mismatch: the file was changed or damaged after it was taken")
        }
        let file = BackupFile(
            clusterId: wire.cluster_id, nodeId: wire.node_id, bar: wire.bar, phases: wire.phases,
            epoch: Epoch(startBeat: wire.epoch.start_beat, startNs: wire.epoch.start_ns, bpm: wire.epoch.bpm),
            pending: wire.pending.map { Pending(atBeat: $0.at_beat, bpm: $0.bpm, justification: $0.justification) },
            term: wire.term, index: wire.index, lastBeat: wire.last_beat, takenAtNs: wire.taken_at_ns)
        try file.validate()
        guard wire.taken_at == RFC3339.string(unixMs: wire.taken_at_ns / 1_000_000) else {
            throw BackupError(reason: "bad_taken_at", detail: "taken_at does not match taken_at_ns")
        }
        return file
    }

    /// Every value in range: ids by the id rule, bar and phases by the flags'
    /// rules, the timeline by the data dir's (`TempoEpoch.validated`), Raft
    /// term and index below 2^62.
    func validate() throws(BackupError) {
        if let violation = PulseConfig.tokenViolation(clusterId) {
            throw BackupError(reason: "bad_cluster_id", detail: "cluster_id \(violation)")
        }
        if let violation = PulseConfig.tokenViolation(nodeId) {
            throw BackupError(reason: "bad_node_id", detail: "node_id \(violation)")
        }
        guard DataDirFiles.supportedBar.contains(bar) else {
            throw BackupError(reason: "bar_out_of_range", detail: "bar \(bar) is outside 1...1024")
        }
        if let problem = Self.phasesProblem(phases, bar: bar) {
            throw BackupError(reason: "bad_phases", detail: "phases \(problem)")
        }
        do {
            try DataDirFiles.checkTimeline(
                file: "backup", startBeat: epoch.startBeat, startNs: epoch.startNs, bpm: epoch.bpm,
                pendingAtBeat: pending?.atBeat, pendingBpm: pending?.bpm, bar: Int64(bar))
        } catch {
            throw BackupError(reason: error.reason, detail: error.detail)
        }
        let maxJustification = AdminLimits().maxJustificationBytes
        if let pending, pending.justification.utf8.count > maxJustification {
            throw BackupError(
                reason: "justification_too_long",
                detail: "the pending change's justification is longer than \(maxJustification) bytes")
        }
        guard (1..<Self.absurd).contains(term) else {
            throw BackupError(reason: "term_out_of_range", detail: "term \(term) is outside 1..<2^62")
        }
        guard index < Self.absurd else {
            throw BackupError(reason: "index_out_of_range", detail: "index \(index) is outside 0..<2^62")
        }
        if let lastBeat, !(0..<Int64(Self.absurd)).contains(lastBeat) {
            throw BackupError(reason: "beat_out_of_range", detail: "last_beat \(lastBeat) is outside 0..<2^62")
        }
        guard TempoEpoch.supportedNs.contains(takenAtNs) else {
            throw BackupError(
                reason: "instant_out_of_range", detail: "taken_at_ns \(takenAtNs) is outside 1970..2200")
        }
    }

    /// Why `phases` could not be given back to `-phases`, or nil: the flag's
    /// rules (1 to `bar` names, each 1 to 64 bytes) and no comma (the flag's
    /// separator).
    static func phasesProblem(_ phases: [String], bar: Int) -> String? {
        TimelineShape.phasesProblem(phases, bar: bar)
    }

    // MARK: into a data dir

    /// The Raft state machine this backup holds (`ClusterState`, as a
    /// snapshot stores it), with the timeline's shape: a restored cluster
    /// keeps the bar and phases (§12).
    var clusterState: ClusterState {
        ClusterState(
            epoch: TempoEpoch.Stored(startBeat: epoch.startBeat, startNs: epoch.startNs, bpm: epoch.bpm),
            pending: pending.map { TempoChange.Stored(atBeat: $0.atBeat, bpm: $0.bpm) },
            justification: pending?.justification ?? "", bar: bar, phases: phases)
    }

    /// The Raft snapshot a new cluster starts from: the state at the backup's
    /// index (at least 1: a single node's backup has no log) and term (the
    /// answering leader's, at least the term of that entry).
    public var raftSnapshot: Snapshot {
        let data = (try? JSONEncoder().encode(clusterState)).map { [UInt8]($0) } ?? []
        return Snapshot(index: max(index, 1), term: term, data: data)
    }

    /// The lowest term a restored cluster publishes with by default: two
    /// above the backup's, so that its frames are not below those of the old
    /// cluster after a leadership handover as it stops (consumers fence on
    /// `term`, refusing only lower ones). `pulse restore --min-term` raises it.
    public var defaultMinTerm: UInt64 { term + 2 }

    /// A fresh hard state for the snapshot: no vote, committed up to the
    /// snapshot, and a term one below `minTerm` (> `term`), which the new
    /// cluster's first election raises to at least `minTerm`.
    public func raftHardState(minTerm: UInt64) -> HardState {
        HardState(term: max(minTerm - 1, term), vote: noNode, commit: max(index, 1))
    }

    /// A single node's `epoch.json`, with the timeline's shape.
    var storedEpoch: StoredEpoch {
        StoredEpoch(
            clusterId: clusterId, startBeat: epoch.startBeat, startNs: epoch.startNs, bpm: epoch.bpm, bar: bar,
            phases: phases, pendingAtBeat: pending?.atBeat, pendingBpm: pending?.bpm,
            pendingJustification: pending?.justification)
    }
}

// MARK: - JSON shape

/// Only the version, read before anything else.
private struct FormatProbe: Decodable {
    var format: String?
    init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: AnyKey.self)
        format = try? c.decodeIfPresent(String.self, forKey: AnyKey("format"))
    }
}

struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ string: String) { stringValue = string }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// Refuses keys outside `known` (a typo or a foreign field is not ignored).
private func refuseUnknownKeys(_ decoder: Decoder, _ known: [String], in object: String) throws {
    let c = try decoder.container(keyedBy: AnyKey.self)
    if let unknown = c.allKeys.first(where: { !known.contains($0.stringValue) }) {
        throw BackupError(
            reason: "unknown_field", detail: "\(object) has an unknown field '\(unknown.stringValue.prefix(64))'")
    }
}

/// The file's JSON object, field for field. `pending` and `last_beat` are
/// written as null when absent; `checksum` is left out of the canonical form.
struct Wire: Codable, Equatable {
    struct Epoch: Codable, Equatable {
        var start_beat: Int64
        var start_ns: Int64
        var bpm: Int64
        enum CodingKeys: String, CodingKey, CaseIterable { case start_beat, start_ns, bpm }
        init(start_beat: Int64, start_ns: Int64, bpm: Int64) {
            self.start_beat = start_beat
            self.start_ns = start_ns
            self.bpm = bpm
        }
        init(from decoder: Decoder) throws {
            try refuseUnknownKeys(decoder, CodingKeys.allCases.map(\.rawValue), in: "epoch")
            let c = try decoder.container(keyedBy: CodingKeys.self)
            start_beat = try c.decode(Int64.self, forKey: .start_beat)
            start_ns = try c.decode(Int64.self, forKey: .start_ns)
            bpm = try c.decode(Int64.self, forKey: .bpm)
        }
    }
    struct Pending: Codable, Equatable {
        var at_beat: Int64
        var bpm: Int64
        var justification: String
        enum CodingKeys: String, CodingKey, CaseIterable { case at_beat, bpm, justification }
        init(at_beat: Int64, bpm: Int64, justification: String) {
            self.at_beat = at_beat
            self.bpm = bpm
            self.justification = justification
        }
        init(from decoder: Decoder) throws {
            try refuseUnknownKeys(decoder, CodingKeys.allCases.map(\.rawValue), in: "pending")
            let c = try decoder.container(keyedBy: CodingKeys.self)
            at_beat = try c.decode(Int64.self, forKey: .at_beat)
            bpm = try c.decode(Int64.self, forKey: .bpm)
            justification = try c.decode(String.self, forKey: .justification)
        }
    }
    var format: String
    var cluster_id: String
    var node_id: String
    var bar: Int
    var phases: [String]
    var epoch: Epoch
    var pending: Pending?
    var term: UInt64
    var index: UInt64
    var last_beat: Int64?
    var taken_at_ns: Int64
    var taken_at: String
    var checksum: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case format, cluster_id, node_id, bar, phases, epoch, pending, term, index, last_beat, taken_at_ns, taken_at
        case checksum
    }

    init(
        format: String, cluster_id: String, node_id: String, bar: Int, phases: [String], epoch: Epoch,
        pending: Pending?, term: UInt64, index: UInt64, last_beat: Int64?, taken_at_ns: Int64, taken_at: String,
        checksum: String?
    ) {
        self.format = format
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.bar = bar
        self.phases = phases
        self.epoch = epoch
        self.pending = pending
        self.term = term
        self.index = index
        self.last_beat = last_beat
        self.taken_at_ns = taken_at_ns
        self.taken_at = taken_at
        self.checksum = checksum
    }

    /// Every field is required (`pending` and `last_beat` may be null).
    init(from decoder: Decoder) throws {
        try refuseUnknownKeys(decoder, CodingKeys.allCases.map(\.rawValue), in: "the backup")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        format = try c.decode(String.self, forKey: .format)
        cluster_id = try c.decode(String.self, forKey: .cluster_id)
        node_id = try c.decode(String.self, forKey: .node_id)
        bar = try c.decode(Int.self, forKey: .bar)
        phases = try c.decode([String].self, forKey: .phases)
        epoch = try c.decode(Epoch.self, forKey: .epoch)
        guard c.contains(.pending) else { throw Self.missing(.pending, c) }
        if try c.decodeNil(forKey: .pending) {
            pending = nil
        } else {
            pending = try c.decode(Pending.self, forKey: .pending)
        }
        term = try c.decode(UInt64.self, forKey: .term)
        index = try c.decode(UInt64.self, forKey: .index)
        guard c.contains(.last_beat) else { throw Self.missing(.last_beat, c) }
        if try c.decodeNil(forKey: .last_beat) {
            last_beat = nil
        } else {
            last_beat = try c.decode(Int64.self, forKey: .last_beat)
        }
        taken_at_ns = try c.decode(Int64.self, forKey: .taken_at_ns)
        taken_at = try c.decode(String.self, forKey: .taken_at)
        checksum = try c.decode(String.self, forKey: .checksum)
    }

    private static func missing(_ key: CodingKeys, _ c: KeyedDecodingContainer<CodingKeys>) -> DecodingError {
        .keyNotFound(key, .init(codingPath: c.codingPath, debugDescription: "missing"))
    }

    func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(format, forKey: .format)
        try c.encode(cluster_id, forKey: .cluster_id)
        try c.encode(node_id, forKey: .node_id)
        try c.encode(bar, forKey: .bar)
        try c.encode(phases, forKey: .phases)
        try c.encode(epoch, forKey: .epoch)
        try c.encode(pending, forKey: .pending)
        try c.encode(term, forKey: .term)
        try c.encode(index, forKey: .index)
        try c.encode(last_beat, forKey: .last_beat)
        try c.encode(taken_at_ns, forKey: .taken_at_ns)
        try c.encode(taken_at, forKey: .taken_at)
        if let checksum { try c.encode(checksum, forKey: .checksum) }
    }
}
