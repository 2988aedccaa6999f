// Structured logs on stderr, one event per line, as text (logfmt-like) or
// JSON. The level comes from -log-level (BACKBEAT_LOG_LEVEL) and can change
// while the node runs (SIGHUP re-reads it from -config): every handler reads
// the one process-wide level, unless a logger set its own. Nothing on the
// beat path logs: anomalies there are counted and summarised by housekeeping.
import Foundation
import Logging
import PulseCore

/// A swift-log handler that writes one line per event to stderr.
struct LineLogHandler: LogHandler {
    /// The process-wide level, unless this logger was given its own.
    var logLevel: Logger.Level {
        get { ownLevel ?? LogSetup.level }
        set { ownLevel = newValue }
    }
    private var ownLevel: Logger.Level?
    var metadata: Logger.Metadata = [:]
    let label: String
    let json: Bool

    init(label: String, json: Bool) {
        self.label = label
        self.json = json
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = self.metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let ts = RFC3339.string(unixMs: Int64(Date().timeIntervalSince1970 * 1000))
        let level = Self.name(event.level)
        var line: String
        if json {
            var object: [String: String] = ["ts": ts, "level": level, "msg": "\(event.message)", "logger": label]
            for (key, value) in merged { object[key] = "\(value)" }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            line = String(decoding: data, as: UTF8.self)
        } else {
            line = "\(ts) \(level.padding(toLength: 5, withPad: " ", startingAt: 0)) \(event.message)"
            for key in merged.keys.sorted() {
                let value = "\(merged[key]!)"
                let quoted = value.contains(where: { $0 == " " || $0 == "\"" || $0 == "=" }) ? "\"\(value)\"" : value
                line += " \(key)=\(quoted)"
            }
        }
        line += "\n"
        FileHandle.standardError.write(Data(line.utf8))
    }

    static func name(_ level: Logger.Level) -> String {
        switch level {
        case .trace: return "trace"
        case .debug: return "debug"
        case .info, .notice: return "info"
        case .warning: return "warn"
        case .error, .critical: return "error"
        }
    }

    static func level(_ name: String) -> Logger.Level {
        switch LogLevelName(rawValue: name) ?? .info {
        case .debug: return .debug
        case .info: return .info
        case .warn: return .warning
        case .error: return .error
        }
    }
}

enum LogSetup {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var current = Logger.Level.info

    /// The process-wide level (any thread; a lock, never on the beat path).
    static var level: Logger.Level {
        get { lock.withLock { current } }
        set { lock.withLock { current = newValue } }
    }

    /// Installs the handler once per process.
    static func bootstrap(level name: String, format: String) {
        level = LineLogHandler.level(name)
        let json = format == "json"
        LoggingSystem.bootstrap { label in LineLogHandler(label: label, json: json) }
    }
}
