// Storage/DataDirFiles.swift — owns the validating parsers of the data dir's
// files (requirements §10): pure functions from bytes to typed values that
// refuse, never trap, on any input, so that start-up and a libFuzzer harness
// run the same code. Reading files (bounded, regular files only) is here too;
// what to do with a refusal (exit with one line) is the caller's.
import Foundation
import Glibc
import PulseCore
import PulsePolicy

/// Why a file of the data dir cannot be used: which file, where (a byte
/// offset, for the Raft log), a reason code and one line for operators.
public struct DataDirError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The file, relative to the data dir: `epoch.json`, `node_id`, `LOCK`,
    /// `raft/hardstate`, `raft/snapshot` or `raft/log`.
    public var file: String
    /// Byte offset of the bad record (Raft log only).
    public var offset: Int?
    /// A snake_case code: the `reason` label of
    /// `backbeat_rejected_input_total{surface="data_dir"}` (a small closed set).
    public var reason: String
    /// What is wrong, one line without the file name.
    public var detail: String

    public init(file: String, offset: Int? = nil, reason: String, detail: String) {
        self.file = file
        self.offset = offset
        self.reason = reason
        self.detail = DataDirFiles.oneLine(detail)
    }

    /// `<file>[ at byte offset N]: <detail>`.
    public var description: String { "\(file)\(offset.map { " at byte offset \($0)" } ?? ""): \(detail)" }
}

/// The committed timeline of a single node, as `epoch.json` holds it.
public struct StoredEpoch: Codable, Equatable, Sendable {
    public var clusterId: String
    public var startBeat: Int64
    public var startNs: Int64
    public var bpm: Int64
    public var bar: Int
    /// The committed phase names (nil in files of a version that did not
    /// store them: the node's -phases fill in, `TimelineShape.resolve`).
    public var phases: [String]?
    /// A committed tempo change not yet applied (beat index and bpm), if any.
    public var pendingAtBeat: Int64?
    public var pendingBpm: Int64?
    public var pendingJustification: String?

    init(
        clusterId: String, startBeat: Int64, startNs: Int64, bpm: Int64, bar: Int, phases: [String]? = nil,
        pendingAtBeat: Int64? = nil, pendingBpm: Int64? = nil, pendingJustification: String? = nil
    ) {
        self.clusterId = clusterId
        self.startBeat = startBeat
        self.startNs = startNs
        self.bpm = bpm
        self.bar = bar
        self.phases = phases
        self.pendingAtBeat = pendingAtBeat
        self.pendingBpm = pendingBpm
        self.pendingJustification = pendingJustification
    }

    /// The epoch; valid by construction once `DataDirFiles.parseEpoch` accepted the file.
    var epoch: TempoEpoch { TempoEpoch(startBeat: startBeat, startNs: startNs, bpm: bpm) }
}

/// Pure parsers and bounded reads for the data dir's files.
public enum DataDirFiles {
    /// Largest `epoch.json` accepted (it is a few hundred bytes).
    public static let maxEpochBytes = 64 << 10
    /// Largest `node_id` accepted (an id is at most 128 bytes, plus a newline).
    public static let maxNodeIdBytes = 1024
    /// Beats per bar a stored timeline may have (the same bounds as `-bar`).
    public static let supportedBar = TimelineShape.supportedBar

    // MARK: epoch.json

    /// Parses and validates `epoch.json`: JSON with the right types, every
    /// field present, a cluster id that follows the id rule, a bar in
    /// 1...1024 and phases (when present) by the rules of `-phases`, an epoch whose math cannot overflow
    /// (`TempoEpoch.validated`), and a pending change (both fields or none) at
    /// a downbeat after the epoch's start whose own epoch is valid too.
    /// Never traps, whatever the bytes.
    public static func parseEpoch(_ bytes: [UInt8]) throws(DataDirError) -> StoredEpoch {
        let file = "epoch.json"
        guard bytes.count <= maxEpochBytes else {
            throw DataDirError(
                file: file, reason: "too_large", detail: "is \(bytes.count) bytes, more than \(maxEpochBytes)")
        }
        let stored: StoredEpoch
        do {
            stored = try JSONDecoder().decode(StoredEpoch.self, from: Data(bytes))
        } catch {
            throw decodingFailure(file: file, error)
        }
        if let violation = PulseConfig.tokenViolation(stored.clusterId) {
            throw DataDirError(file: file, reason: "bad_cluster_id", detail: "clusterId \(violation)")
        }
        _ = try checkShape(file: file, bar: stored.bar, phases: stored.phases)
        try checkTimeline(
            file: file, startBeat: stored.startBeat, startNs: stored.startNs, bpm: stored.bpm,
            pendingAtBeat: stored.pendingAtBeat, pendingBpm: stored.pendingBpm, bar: Int64(stored.bar))
        return stored
    }

    /// Validates an epoch and its optional pending change (shared by
    /// `epoch.json` and Raft snapshots): the epoch per `TempoEpoch.validated`;
    /// the change, if any, after the epoch's start, at a downbeat when `bar`
    /// is known, and starting an epoch that is valid itself.
    static func checkTimeline(
        file: String, startBeat: Int64, startNs: Int64, bpm: Int64, pendingAtBeat: Int64?, pendingBpm: Int64?,
        bar: Int64?
    ) throws(DataDirError) {
        let epoch: TempoEpoch
        do {
            epoch = try TempoEpoch.validated(startBeat: startBeat, startNs: startNs, bpm: bpm)
        } catch {
            throw epochFailure(file: file, error, what: "")
        }
        switch (pendingAtBeat, pendingBpm) {
        case (nil, nil):
            return
        case (let atBeat?, let pendingBpm?):
            guard atBeat > startBeat, bar.map({ atBeat % $0 == 0 }) ?? true else {
                throw DataDirError(
                    file: file, reason: "bad_pending",
                    detail: "the pending change's beat \(atBeat) is not a downbeat after the epoch's start \(startBeat)"
                )
            }
            guard let atNs = epoch.checkedInstantNs(ofBeat: atBeat) else {
                throw DataDirError(
                    file: file, reason: "beat_out_of_range",
                    detail: "the pending change's beat \(atBeat) is beyond the timeline's range")
            }
            do {
                _ = try TempoEpoch.validated(startBeat: atBeat, startNs: atNs, bpm: pendingBpm)
            } catch {
                throw epochFailure(file: file, error, what: "the pending change's ")
            }
        default:
            throw DataDirError(
                file: file, reason: "bad_pending", detail: "a pending change needs both its beat and its bpm")
        }
    }

    // MARK: the timeline's shape

    /// Validates a stored shape on its own (without the node's flags):
    /// `TimelineShape`'s rules for what is there — both parts, the bar alone
    /// (a previous version's first Raft entry or `epoch.json`), or none (its
    /// snapshots). Returns the stored bar, nil when there is none.
    /// Reasons: `bar_out_of_range`, `bad_phases`. Never traps.
    public static func checkShape(file: String, bar: Int?, phases: [String]?) throws(DataDirError) -> Int? {
        do {
            return try TimelineShape.storedBar(bar: bar, phases: phases)
        } catch {
            throw DataDirError(file: file, reason: error.reason, detail: error.detail)
        }
    }

    /// The committed shape from a stored one, the node's `flags` filling in
    /// what a previous version did not store (`TimelineShape.resolve`).
    public static func checkShape(file: String, bar: Int?, phases: [String]?, flags: TimelineShape)
        throws(DataDirError) -> TimelineShape
    {
        do {
            return try TimelineShape.resolve(bar: bar, phases: phases, flags: flags)
        } catch {
            throw DataDirError(file: file, reason: error.reason, detail: error.detail)
        }
    }

    /// How far ahead of this node's clock a stored epoch may start: a
    /// bootstrap starts it on the next second and a tempo change is stored
    /// once its downbeat has come, so a day ahead means a wrong file or clock.
    public static let maxStartAheadNs: Int64 = 86_400_000_000_000

    /// Refuses an epoch that starts more than `maxStartAheadNs` after `nowNs`:
    /// the node would wait, silent, for a timeline that is not this cluster's.
    public static func checkNotFarAhead(_ stored: StoredEpoch, nowNs: Int64) throws(DataDirError) {
        let (limit, overflow) = nowNs.addingReportingOverflow(maxStartAheadNs)
        guard overflow || stored.startNs <= limit else {
            throw DataDirError(
                file: "epoch.json", reason: "start_in_future",
                detail: "the timeline starts at \(stored.startNs) ns, more than a day after this clock's \(nowNs) ns")
        }
    }

    private static func epochFailure(file: String, _ error: TempoEpochError, what: String) -> DataDirError {
        switch error {
        case .bpmOutOfRange(let bpm):
            return DataDirError(
                file: file, reason: "bpm_out_of_range",
                detail: "\(what)bpm \(bpm) is outside \(describe(TempoEpoch.supportedBpm))")
        case .startBeatOutOfRange(let beat):
            return DataDirError(
                file: file, reason: "beat_out_of_range",
                detail: "\(what)start beat \(beat) is outside \(describe(TempoEpoch.supportedBeats))")
        case .startNsOutOfRange(let ns):
            return DataDirError(
                file: file, reason: "instant_out_of_range",
                detail: "\(what)start instant \(ns) ns is outside 1970..2200 (\(describe(TempoEpoch.supportedNs)))")
        }
    }

    // MARK: node_id

    /// Parses the `node_id` file: UTF-8, surrounding whitespace ignored, not
    /// empty, and following the same rule as `-node-id` (at most 128 bytes,
    /// no control characters, spaces, '.', '*', '>', '/', '\'). A node's id
    /// never changes silently: an unusable file refuses to start rather than
    /// being replaced by a new id. Never traps.
    public static func parseNodeId(_ bytes: [UInt8]) throws(DataDirError) -> String {
        let file = "node_id"
        guard bytes.count <= maxNodeIdBytes else {
            throw DataDirError(
                file: file, reason: "too_large", detail: "is \(bytes.count) bytes, more than \(maxNodeIdBytes)")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw DataDirError(file: file, reason: "not_utf8", detail: "is not valid UTF-8")
        }
        let id = text.trimmingCharacters(in: .whitespacesAndNewlines)
        if id.isEmpty {
            throw DataDirError(
                file: file, reason: "empty",
                detail: "is empty (give -node-id, or remove the file to generate a new id)")
        }
        if let violation = PulseConfig.tokenViolation(id) {
            throw DataDirError(file: file, reason: "bad_id", detail: "the node id \(violation)")
        }
        return id
    }

    // MARK: reading

    /// Reads `path` whole, or nil when it does not exist. Refuses anything but
    /// a regular file (a FIFO would block the start, a directory has no
    /// bytes), a symbolic link (`O_NOFOLLOW`: whoever planted it chose what
    /// we read) and files longer than `limit` (so a huge file cannot exhaust memory).
    public static func read(_ path: String, file: String, limit: Int) throws(DataDirError) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOFOLLOW)
        if fd < 0 {
            if errno == ENOENT { return nil }
            if errno == ELOOP {
                throw DataDirError(file: file, reason: "symbolic_link", detail: "is a symbolic link")
            }
            throw DataDirError(
                file: file, reason: "unreadable", detail: "cannot open: \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            throw DataDirError(
                file: file, reason: "unreadable", detail: "cannot stat: \(String(cString: strerror(errno)))")
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw DataDirError(file: file, reason: "not_regular_file", detail: "is not a regular file")
        }
        guard info.st_size <= limit else {
            throw DataDirError(file: file, reason: "too_large", detail: "is \(info.st_size) bytes, more than \(limit)")
        }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
        var count = 0
        while count < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + count, $0.count - count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else {
                throw DataDirError(
                    file: file, reason: "unreadable", detail: "cannot read: \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }  // shrank while reading: keep what is there
            count += n
        }
        return Array(bytes.prefix(count))
    }

    // MARK: one-line messages

    /// A decoding error as one line naming the field.
    static func decodingFailure(file: String, _ error: Error) -> DataDirError {
        func path(_ context: DecodingError.Context, _ last: CodingKey? = nil) -> String {
            (context.codingPath + (last.map { [$0] } ?? [])).map(\.stringValue).joined(separator: ".")
        }
        switch error {
        case DecodingError.typeMismatch(_, let context) where context.codingPath.isEmpty,
            DecodingError.valueNotFound(_, let context) where context.codingPath.isEmpty:
            return DataDirError(file: file, reason: "wrong_type", detail: "is not a JSON object of the expected shape")
        case DecodingError.keyNotFound(let key, let context):
            return DataDirError(file: file, reason: "missing_field", detail: "field '\(path(context, key))' is missing")
        case DecodingError.typeMismatch(let type, let context):
            return DataDirError(
                file: file, reason: "wrong_type", detail: "field '\(path(context))' is not a valid \(type)")
        case DecodingError.valueNotFound(let type, let context):
            return DataDirError(
                file: file, reason: "wrong_type", detail: "field '\(path(context))' is null, not \(type)")
        case DecodingError.dataCorrupted(let context) where !context.codingPath.isEmpty:
            return DataDirError(
                file: file, reason: "wrong_type",
                detail: "field '\(path(context))' is not valid: \(context.debugDescription)")
        default:
            return DataDirError(
                file: file, reason: "bad_json",
                detail: "is not valid JSON, or holds a number that is not a 64-bit integer")
        }
    }

    /// `text` on one line of at most 200 characters: control characters
    /// (newlines included) become spaces, so a message stays one line.
    public static func oneLine(_ text: String) -> String {
        var out = String(
            String.UnicodeScalarView(
                text.unicodeScalars.map {
                    CharacterSet.controlCharacters.contains($0) || CharacterSet.newlines.contains($0) ? " " : $0
                }))
        if out.count > 200 { out = String(out.prefix(200)) + "…" }
        return out
    }

    private static func describe<T>(_ range: ClosedRange<T>) -> String { "\(range.lowerBound)...\(range.upperBound)" }
}
