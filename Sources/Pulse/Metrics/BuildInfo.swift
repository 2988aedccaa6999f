// Metrics: which build runs. `pulse --version` prints it and
// `backbeat_build_info{version,commit,swift}` exports it (value 1), so a
// dashboard or an operator can tell the builds of a cluster apart during a
// rolling upgrade.
import CLoop

/// The version, commit and compiler of this binary.
public enum BuildInfo {
    /// The release version (bumped with each CHANGELOG release).
    public static let version = "0.1.0"
    /// `git describe --always --dirty` at build time (written by make), or "unknown".
    public static var commit: String { String(cString: cloop_build_commit()) }
    /// The Swift compiler that built the binary (major.minor).
    public static let swift: String = {
        #if compiler(>=6.5)
            return "6.5+"
        #elseif compiler(>=6.4)
            return "6.4"
        #elseif compiler(>=6.3)
            return "6.3"
        #elseif compiler(>=6.2)
            return "6.2"
        #elseif compiler(>=6.1)
            return "6.1"
        #else
            return "6.0"
        #endif
    }()

    /// How it was compiled: "debug" or "release" (SwiftPM defines DEBUG in
    /// debug builds). Bench refuses to judge a debug build by its timings.
    public static let mode: String = {
        #if DEBUG
            return "debug"
        #else
            return "release"
        #endif
    }()

    /// `pulse --version`'s line.
    public static var line: String { "pulse \(version) (commit \(commit), Swift \(swift), \(mode))" }
}
