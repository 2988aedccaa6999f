// Storage: the node's data directory. Holds the node id (when generated),
// the Raft state (`raft/`, RaftStore: a single node's too, as a one-voter
// log) and, only until the first start migrates it (EpochMigration), the
// `epoch.json` of a release before, or of `pulse restore` for a single node.
// Files are written atomically (temp file, fsync, rename, fsync of the
// directory), never on the beat path. An exclusive lock file stops two processes sharing one directory.
// Every file is validated when it is loaded (DataDirFiles): one that cannot
// be used stops the start with one line naming it, and is counted
// (`backbeat_rejected_input_total{surface="data_dir"}`); nothing is repaired
// or replaced silently.
//
// Only this process's user may touch it (issue 20, item 6): the directory is
// created 0700 (missing parents too), and one owned by another user or
// writable by its group or others is refused at start-up with one line
// (anyone who can write there could plant a file or a symbolic link the node
// would trust); an acceptable one that others can read or enter is narrowed
// to 0700. Files are created 0600 without following symbolic links
// (`O_NOFOLLOW`; a temp file is created afresh with `O_EXCL`), and an
// existing `LOCK`, `node_id` or `epoch.json` readable by others is narrowed to 0600.
import Foundation
import Glibc
import PulseCore
import PulsePolicy

/// The on-disk state of one node.
final class DataDir {
    let path: String
    private var lockFd: Int32 = -1

    /// Where refusals are counted (the node's `RejectedInput`).
    private let rejected: RejectedInput
    /// Runs and times every sync (`backbeat_fsync_duration_seconds`).
    private let sync: DiskSync

    /// The committed timeline shape (§12), set once at start-up before any
    /// write: every `epoch.json` this node writes carries it, whoever built
    /// the value, so a tempo change never drops the phases from the file.
    var shape: TimelineShape?

    init(path: String, rejected: RejectedInput, sync: DiskSync = .untimed) throws {
        self.path = path
        self.rejected = rejected
        self.sync = sync
        try Self.createPrivateDirectory(path)
        try checkOwnership()
        // O_NOFOLLOW: a LOCK planted as a symlink does not make us create or
        // lock a file elsewhere; it must be a regular file (not a FIFO or device).
        lockFd = open(path + "/LOCK", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, Self.fileMode)
        guard lockFd >= 0 else {
            let reason = errno == ELOOP ? "is a symbolic link" : String(cString: strerror(errno))
            throw refuse(DataDirError(file: "LOCK", reason: "unusable_lock", detail: "cannot be opened: \(reason)"))
        }
        var info = stat()
        guard fstat(lockFd, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            close(lockFd)
            lockFd = -1
            throw refuse(DataDirError(file: "LOCK", reason: "unusable_lock", detail: "is not a regular file"))
        }
        guard flock(lockFd, LOCK_EX | LOCK_NB) == 0 else {
            close(lockFd)
            lockFd = -1
            throw PulseError.startup("data dir \(path) is in use by another pulse process")
        }
        for name in ["LOCK", "node_id", "epoch.json"] { narrowFile(name) }
    }

    /// Files: owner read and write only. Directories: owner only.
    static let fileMode: mode_t = 0o600
    static let directoryMode: mode_t = 0o700

    /// Creates `path` and any missing parent with `directoryMode`.
    static func createPrivateDirectory(_ path: String) throws {
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            prefix += (prefix.isEmpty || prefix.hasSuffix("/") ? "" : "/") + component
            if mkdir(prefix, directoryMode) != 0 && errno != EEXIST {
                throw PulseError.startup(
                    "cannot create data dir \(path): \(prefix): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Refuses a data dir owned by another user or writable by group or
    /// others (counted: `foreign_owner`, `writable_by_others`); narrows one
    /// that others may read or enter to `directoryMode`.
    private func checkOwnership() throws {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        var info = stat()
        guard fd >= 0, fstat(fd, &info) == 0 else {
            let reason = String(cString: strerror(errno))
            if fd >= 0 { close(fd) }
            throw PulseError.startup("cannot open data dir \(path): \(reason)")
        }
        defer { close(fd) }
        let me = geteuid()
        guard info.st_uid == me else {
            rejected.record(.dataDir, "foreign_owner")
            throw PulseError.startup(
                "data dir \(path) is owned by uid \(info.st_uid), not by this process's uid \(me); refusing to start")
        }
        let permissions = info.st_mode & 0o7777
        guard permissions & (S_IWGRP | S_IWOTH) == 0 else {
            rejected.record(.dataDir, "writable_by_others")
            throw PulseError.startup(
                "data dir \(path) is writable by group or others (mode \(String(permissions, radix: 8))); "
                    + "chmod 700 it; refusing to start")
        }
        if permissions & 0o077 != 0 { _ = fchmod(fd, Self.directoryMode) }
    }

    /// An existing regular file of ours that others may read becomes `fileMode`.
    private func narrowFile(_ name: String) { Self.narrow(path + "/" + name) }

    /// An existing regular file (`fileMode`) or directory (`directoryMode`)
    /// of ours that group or others may use is narrowed to owner only; a
    /// link, another owner's file or a missing one is left alone (the
    /// readers refuse links and foreign files on their own).
    static func narrow(_ path: String) {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_uid == geteuid(), info.st_mode & 0o077 != 0 else { return }
        switch info.st_mode & S_IFMT {
        case S_IFREG: _ = fchmod(fd, fileMode)
        case S_IFDIR: _ = fchmod(fd, directoryMode)
        default: break
        }
    }

    /// Counts `error` and turns it into the one-line start-up error naming the file.
    func refuse(_ error: DataDirError) -> PulseError {
        rejected.record(.dataDir, error.reason)
        return PulseError.startup("\(path)/\(error); refusing to start")
    }

    deinit {
        if lockFd >= 0 { close(lockFd) }
    }

    /// The node id: `configured` (already validated with the flags), else
    /// the persisted one (validated: an unusable file refuses to start, it is
    /// never replaced), else a new one (`pulse-` and 6 random hex digits) saved now.
    func nodeId(preferring configured: String) throws -> String {
        if !configured.isEmpty { return configured }
        if let bytes = try readValidated("node_id", limit: DataDirFiles.maxNodeIdBytes) {
            do {
                return try DataDirFiles.parseNodeId(bytes)
            } catch {
                throw refuse(error)
            }
        }
        let generated = "pulse-" + String(format: "%06x", UInt32.random(in: 0...0xff_ffff))
        try writeAtomically("node_id", Data((generated + "\n").utf8))
        return generated
    }

    /// The stored timeline identity (see `StoredEpoch`, in DataDirFiles.swift).
    typealias StoredEpoch = Pulse.StoredEpoch

    /// The stored timeline, validated (`DataDirFiles.parseEpoch`), or nil when there is none.
    func loadEpoch() throws -> StoredEpoch? {
        guard let bytes = try readValidated("epoch.json", limit: DataDirFiles.maxEpochBytes) else { return nil }
        do {
            return try DataDirFiles.parseEpoch(bytes)
        } catch {
            throw refuse(error)
        }
    }

    func saveEpoch(_ epoch: StoredEpoch) throws {
        try writeAtomically("epoch.json", try Self.encode(stamped(epoch)))
    }

    /// Renames `epoch.json` to `name` (kept, never read again) and syncs
    /// the directory, so that the rename is durable before the node runs.
    func retireEpoch(as name: String) throws {
        guard rename(path + "/epoch.json", path + "/" + name) == 0 else {
            throw PulseError.startup("cannot rename \(path)/epoch.json: \(String(cString: strerror(errno)))")
        }
        let dirFd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dirFd >= 0 else { throw PulseError.startup("open \(path): \(String(cString: strerror(errno)))") }
        defer { close(dirFd) }
        guard sync.fsync(dirFd, .dataDirectory) else {
            throw PulseError.startup("fsync \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// `epoch` with the committed shape (the bar is the shape's already:
    /// the node runs only with its flags equal to it).
    private func stamped(_ epoch: StoredEpoch) -> StoredEpoch {
        guard let shape else { return epoch }
        precondition(epoch.bar == shape.bar, "epoch.json written with bar \(epoch.bar), committed \(shape.bar)")
        var epoch = epoch
        epoch.phases = shape.phases
        return epoch
    }

    static func encode(_ epoch: StoredEpoch) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(epoch)
    }

    /// The bytes of `name` (nil when absent), read with `DataDirFiles.read`'s bounds.
    private func readValidated(_ name: String, limit: Int) throws -> [UInt8]? {
        do {
            return try DataDirFiles.read(path + "/" + name, file: name, limit: limit)
        } catch {
            throw refuse(error)
        }
    }

    /// Writes `name` so that a crash leaves either the old or the new content.
    func writeAtomically(_ name: String, _ data: Data) throws {
        let final = path + "/" + name
        let temp = final + ".tmp"
        // A leftover (or planted) temp file or link goes; ours is new, never followed.
        if unlink(temp) != 0 && errno != ENOENT {
            throw PulseError.startup("cannot remove \(temp): \(String(cString: strerror(errno)))")
        }
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, Self.fileMode)
        guard fd >= 0 else { throw PulseError.startup("cannot write \(temp): \(String(cString: strerror(errno)))") }
        let ok = data.withUnsafeBytes { raw -> Bool in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                offset += n
            }
            return sync.fsync(fd, DiskSync.File(dataDirName: name))
        }
        close(fd)
        guard ok, rename(temp, final) == 0 else {
            throw PulseError.startup("cannot write \(final): \(String(cString: strerror(errno)))")
        }
        // The rename is durable only once the directory is synced: a failure is an error, not a hope.
        let dirFd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dirFd >= 0 else { throw PulseError.startup("open \(path): \(String(cString: strerror(errno)))") }
        defer { close(dirFd) }
        guard sync.fsync(dirFd, .dataDirectory) else {
            throw PulseError.startup("fsync \(path): \(String(cString: strerror(errno)))")
        }
    }
}
