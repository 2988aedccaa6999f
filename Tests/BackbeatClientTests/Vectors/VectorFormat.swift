// The conformance vectors' format (docs/vectors/README.md), as Codable
// structs: the generator writes them, the checks read them back.
import Foundation

struct EpochSpec: Codable, Equatable {
    var start_beat: Int64
    var start_ns: Int64
    var bpm: Int64
}

struct ChangeSpec: Codable, Equatable {
    var at_beat: Int64
    var bpm: Int64
}

struct TimelineSpec: Codable, Equatable {
    var cluster_id: String
    var epoch: EpochSpec
    var pending: ChangeSpec?
    var bar: Int
    var phases: [String]
}

// MARK: timeline.json

struct TimeQuery: Codable, Equatable {
    var t_ns: Int64
    var beat: Int64
    var offset_ns: Int64
    var length_ns: Int64
    var beats: Double
    var quantum: Int64
    var phase_in_quantum: Double
    var phase: String
    var downbeat: Bool
    var window_id: String
    var bpm: Int64
    var next_beat: Int64
    var next_beat_ns: Int64
    var next_downbeat: Int64
    var next_downbeat_ns: Int64
}

struct BeatQuery: Codable, Equatable {
    var beat: Int64
    var instant_ns: Int64
    var deadline_ns: Int64
    var deadline_ms: Int64
    var downbeat: Bool
    var phase: String
    var window_id: String
    var bpm: Int64
    var bar_start: Int64
}

struct TimelineCase: Codable, Equatable {
    var name: String
    var timeline: TimelineSpec
    var at: [TimeQuery]
    var beats: [BeatQuery]
}

struct TimelineVectors: Codable, Equatable {
    var description: String
    var cases: [TimelineCase]
}

// MARK: tempo.json

struct InstantQuery: Codable, Equatable {
    var beat: Int64
    var instant_ns: Int64
    var bpm: Int64
}

struct PositionQuery: Codable, Equatable {
    var t_ns: Int64
    var beat: Int64
    var offset_ns: Int64
    var length_ns: Int64
}

struct TempoCase: Codable, Equatable {
    var name: String
    var timeline: TimelineSpec
    var change: ChangeSpec
    /// "scheduled", or the refusal: PulseCore's `Timeline.schedule` error
    /// (`not_a_downbeat`, `not_after_epoch_start`, `invalid_bpm`), or
    /// `out_of_range` when the next epoch is outside the supported math.
    var result: String
    var at_ns: Int64?
    var instants: [InstantQuery]
    var positions: [PositionQuery]
}

struct TempoVectors: Codable, Equatable {
    var description: String
    var cases: [TempoCase]
}

// MARK: frames.json

struct DecodedSpec: Codable, Equatable {
    var cluster_id: String
    var beat_index: Int64
    var downbeat: Bool
    var phase: String
    var hlc_ms: Int64
    var hlc_counter: UInt32
    var publisher: String
    var deadline_ms: Int64
    var tempo_bpm: Int64
    var window_id: String
    var term: UInt64
    var degraded: Bool
}

struct FrameCase: Codable, Equatable {
    var name: String
    /// The payload as text, or (for bytes that are not UTF-8) `frame_hex`.
    var frame: String?
    var frame_hex: String?
    /// "accepted" or the decoder's refusal reason.
    var result: String
    var decoded: DecodedSpec?

    var bytes: [UInt8] {
        if let frame { return Array(frame.utf8) }
        let hex = Array((frame_hex ?? "").utf8)
        return stride(from: 0, to: hex.count - 1, by: 2).map {
            UInt8(String(decoding: hex[$0...$0 + 1], as: UTF8.self), radix: 16)!
        }
    }
}

struct FrameVectors: Codable, Equatable {
    var description: String
    var cases: [FrameCase]
}

// MARK: sequences.json

struct EventSpec: Codable, Equatable {
    var kind: String
    var beat: Int64?
    var first: Int64?
    var last: Int64?
    var term: UInt64?
    var previous_term: UInt64?
    var publisher: String?
    var bpm: Int64?
    var previous_bpm: Int64?
    var at_beat: Int64?
    var reason: String?
    var field: String?
}

struct TrackerState: Codable, Equatable {
    var last_index: Int64
    var fence_term: UInt64
    var accepted: UInt64
    var duplicates: UInt64
    var refused: UInt64
    /// `[epoch.start_beat, pending ? 1 : 0]` of the timeline held, or nil.
    var timeline_version: [Int64]?
}

struct Step: Codable, Equatable {
    /// A timeline message (reply or publication), adopted over the one held...
    var timeline: String?
    /// ...or a frame, judged with the timeline held (none before the first).
    var frame: String?
    var received_ns: Int64?
    var events: [EventSpec]
    var state: TrackerState
}

struct SequenceCase: Codable, Equatable {
    var name: String
    var cluster_id: String
    var steps: [Step]
}

struct SequenceVectors: Codable, Equatable {
    var description: String
    var cases: [SequenceCase]
}

enum VectorFiles {
    /// docs/vectors, found from this file's path.
    static var directory: URL {
        var url = URL(fileURLWithPath: #filePath)
        while url.pathComponents.count > 1 && url.lastPathComponent != "Tests" { url.deleteLastPathComponent() }
        return url.deletingLastPathComponent().appendingPathComponent("docs/vectors")
    }

    static func read<T: Decodable>(_ name: String, as type: T.Type) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(contentsOf: directory.appendingPathComponent(name)))
    }

    static func write<T: Encodable>(_ value: T, _ name: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(value)
        data.append(0x0a)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try data.write(to: directory.appendingPathComponent(name))
    }
}
