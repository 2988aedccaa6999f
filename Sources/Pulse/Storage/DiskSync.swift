// Storage: the data dir's syncs, timed. Every fsync and fdatasync of the
// data dir (DataDir's files, RaftStore's through PosixRaftFiles) goes
// through a `DiskSync`, which tells its observer how long the call took;
// the node feeds `backbeat_fsync_duration_seconds{file}` from it. The syncs
// run on the storage queues, never on the loop thread: an observer is
// called from those threads and must be thread-safe.
import Glibc

/// Runs the data dir's syncs and reports each one's duration.
public struct DiskSync: Sendable {
    /// What a sync made durable, relative to the data dir (the metric's
    /// `file` label, a closed set). A file replaced through a temp file is
    /// named by its final name; "raft/" and "." are the directories whose
    /// entries a rename or a created file needs synced.
    public enum File: String, CaseIterable, Sendable {
        case raftLog = "raft/log"
        case raftHardState = "raft/hardstate"
        case raftSnapshot = "raft/snapshot"
        case raftDirectory = "raft/"
        case epoch = "epoch.json"
        case nodeId = "node_id"
        case dataDirectory = "."

        /// The file `RaftFiles` calls `name` ("log", "hardstate", "snapshot").
        init(raftName name: String) {
            switch name {
            case "hardstate": self = .raftHardState
            case "snapshot": self = .raftSnapshot
            default: self = .raftLog
            }
        }

        /// The data dir's own file `name` ("epoch.json", "node_id").
        init(dataDirName name: String) { self = name == "node_id" ? .nodeId : .epoch }
    }

    /// Called after each sync with what was synced and how long the call
    /// took (CLOCK_MONOTONIC, ns), whether it succeeded or not.
    public typealias Observer = @Sendable (_ file: File, _ durationNs: Int64) -> Void

    private let observer: Observer?

    public init(observer: Observer?) { self.observer = observer }

    /// Syncs without timing (tools and tests that have no metrics).
    public static let untimed = DiskSync(observer: nil)

    /// `fsync(fd)`, timed; true when it succeeded (else `errno` says why).
    func fsync(_ fd: Int32, _ file: File) -> Bool { timed(file) { Glibc.fsync(fd) } }

    /// `fdatasync(fd)`, timed; true when it succeeded (else `errno` says why).
    func fdatasync(_ fd: Int32, _ file: File) -> Bool { timed(file) { Glibc.fdatasync(fd) } }

    private func timed(_ file: File, _ sync: () -> Int32) -> Bool {
        guard let observer else { return sync() == 0 }
        let startNs = Self.monotonicNs()
        let status = sync()
        let failure = errno  // the caller reports a failure with errno: the observer must not change it
        observer(file, Self.monotonicNs() - startNs)
        errno = failure
        return status == 0
    }

    private static func monotonicNs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
