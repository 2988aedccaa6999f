// PulsePolicy/TimelineShape.swift — owns the timeline's shape (requirements
// §12): beats per bar and the phase names, committed once with the first
// epoch and never changed after. Pure: validation, the rule for state
// written by a version without a shape, and the one-line refusal when a
// node's flags differ from the committed shape.
//
// Guarantees:
// - A shape is valid by the same rules as `-bar` and `-phases` (bar in
//   1...1024; 1 to `bar` phase names of 1 to 64 bytes, without ','), so any
//   committed shape can be given back to the flags and every decoded one is
//   checked before use (`validated`, never traps).
// - Every node of a timeline runs with the committed shape: a node whose
//   flags differ refuses to start, or stops before it publishes anything
//   (`mismatch`). So frames (downbeat, phase, window id), `/timeline` and
//   the live view are the same on every node, whoever leads.
// - State from a previous version carries no shape (snapshots, `epoch.json`)
//   or only the bar (the first Raft entry): the missing parts are the
//   node's flags (`resolve`), and the node writes them with its next
//   snapshot or `epoch.json`.

/// The timeline's shape: beats per bar and the phase names (requirements §1).
public struct TimelineShape: Equatable, Sendable, CustomStringConvertible {
    public let bar: Int
    public let phases: [String]

    /// Beats per bar a shape may have (the bounds of `-bar`).
    public static let supportedBar = 1...1024
    /// Longest phase name in bytes (the bound of `-phases`).
    public static let maxPhaseBytes = 64

    /// Validates the values (see the file header); throws why not.
    public init(bar: Int, phases: [String]) throws(TimelineShapeError) {
        guard Self.supportedBar.contains(bar) else {
            throw TimelineShapeError(
                reason: "bar_out_of_range",
                detail: "bar \(bar) is outside \(Self.supportedBar.lowerBound)...\(Self.supportedBar.upperBound)")
        }
        if let problem = Self.phasesProblem(phases, bar: bar) {
            throw TimelineShapeError(reason: "bad_phases", detail: "phases \(problem)")
        }
        self.init(checked: bar, phases)
    }

    private init(checked bar: Int, _ phases: [String]) {
        self.bar = bar
        self.phases = phases
    }

    /// Why `phases` could not be given back to `-phases`, or nil: 1 to
    /// `bar` names, each 1 to 64 bytes, no ',' (the flag's separator).
    public static func phasesProblem(_ phases: [String], bar: Int) -> String? {
        if phases.isEmpty { return "must name at least one phase" }
        if phases.count > bar { return "has \(phases.count) names but a bar has only \(bar) beats" }
        if phases.contains(where: { $0.isEmpty || $0.utf8.count > maxPhaseBytes }) {
            return "names must be 1 to \(maxPhaseBytes) bytes"
        }
        if phases.contains(where: { $0.contains(",") }) { return "names must not contain ','" }
        return nil
    }

    /// The committed shape from what committed state holds: `bar` and
    /// `phases` as stored, nil where a previous version stored nothing (no
    /// shape at all, or the bar alone), in which case the node's `flags` fill
    /// in (the rule for old data dirs, docs/decisions.md). Throws when the
    /// stored values are invalid, or phases come without a bar (no version
    /// wrote that). Flag phases that do not fit a stored bar are kept: the
    /// result then differs from the flags in its bar, so `mismatch` refuses it.
    public static func resolve(bar: Int?, phases: [String]?, flags: TimelineShape) throws(TimelineShapeError)
        -> TimelineShape
    {
        switch (bar, phases) {
        case (nil, nil):
            return flags
        case (let bar?, let phases?):
            return try TimelineShape(bar: bar, phases: phases)
        case (let bar?, nil):
            guard supportedBar.contains(bar) else {
                throw TimelineShapeError(
                    reason: "bar_out_of_range",
                    detail: "bar \(bar) is outside \(supportedBar.lowerBound)...\(supportedBar.upperBound)")
            }
            return (try? TimelineShape(bar: bar, phases: flags.phases)) ?? TimelineShape(checked: bar, flags.phases)
        case (nil, _?):
            throw TimelineShapeError(reason: "bad_phases", detail: "phases are stored without a bar")
        }
    }

    /// The bar a stored shape commits, nil when it stores none (a previous
    /// version's state); throws when the stored values are invalid. For
    /// checks that have no flags at hand (a bar alone fits any valid bar with
    /// one phase).
    public static func storedBar(bar: Int?, phases: [String]?) throws(TimelineShapeError) -> Int? {
        guard let bar else {
            guard phases == nil else {
                throw TimelineShapeError(reason: "bad_phases", detail: "phases are stored without a bar")
            }
            return nil
        }
        return try TimelineShape(bar: bar, phases: phases ?? ["_"]).bar
    }

    /// Byte-wise equality: frames carry the phase names' bytes, so two
    /// shapes are the same only when those bytes are (Swift's `String ==`
    /// would equate "é" and "e\u{301}", which encode differently).
    public static func == (a: TimelineShape, b: TimelineShape) -> Bool {
        a.bar == b.bar && a.phases.count == b.phases.count
            && zip(a.phases, b.phases).allSatisfy { $0.utf8.elementsEqual($1.utf8) }
    }

    /// The flags' form, `-bar 8 -phases plan,work,review`, on one line
    /// (control characters, which the flags do not refuse, become '?').
    public var description: String {
        let names = phases.joined(separator: ",").unicodeScalars.map {
            $0.value < 0x20 || $0.value == 0x7f ? "?" : Character($0)
        }
        return "-bar \(bar) -phases \(String(names))"
    }

    /// One line saying why a node started with `flags` cannot serve this
    /// committed shape, or nil when they agree. Every value is compared,
    /// flags left at their defaults too (docs/decisions.md).
    public func mismatch(flags: TimelineShape, committedIn place: String) -> String? {
        guard flags != self else { return nil }
        return
            "\(place) holds the timeline shape \(self), but this node was started with \(flags); "
            + "start it with \(self) (a timeline's shape never changes)"
    }
}

/// Why a stored shape cannot be used: a snake_case reason and one line.
public struct TimelineShapeError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `bar_out_of_range` or `bad_phases`.
    public var reason: String
    public var detail: String
    public var description: String { detail }
}
