// Cluster: the file-system port under RaftStore.
//
// RaftStore decides what to write and in which order; a `RaftFiles` does the
// writing and says when it is durable. The service plugs in `PosixRaftFiles`
// (`<data-dir>/raft/`, fsync and directory sync); the whole-cluster simulator
// plugs in a simulated disk that loses what was not synced and tears the
// last write at a crash (Tests/ClusterSimTests/SimFiles.swift), so the
// simulator persists through the same encoding and the same order of writes
// as the binary, and restarts from what that left.
import Foundation
import Glibc

/// Where RaftStore's three files live. Every call is synchronous and
/// returns only once what it wrote is durable (or throws).
public protocol RaftFiles: AnyObject {
    /// A file's bytes (nil: it does not exist); refuses non-regular files and
    /// files over `limit` bytes with a `DataDirError` naming `raft/<name>`.
    func read(_ name: String, limit: Int) throws(DataDirError) -> [UInt8]?
    /// Replaces `name` with `bytes` atomically: after a crash the file holds
    /// either its old bytes or all of the new ones.
    func replace(_ name: String, with bytes: [UInt8]) throws
    /// Appends `bytes` to `name` and syncs them. A crash during the call may
    /// leave any prefix of `bytes` (a torn tail), never more.
    func append(_ name: String, _ bytes: [UInt8]) throws
    /// Where the files are, for messages ("<data-dir>/").
    var location: String { get }
}

/// `<data-dir>/raft/` on the local file system.
public final class PosixRaftFiles: RaftFiles {
    let directory: String
    /// Runs and times every sync (`backbeat_fsync_duration_seconds`).
    let sync: DiskSync

    /// Creates `<dataDir>/raft` when missing (0700); one of an earlier
    /// version and its files are narrowed to owner only (0700, 0600).
    public init(dataDir: String, sync: DiskSync = .untimed) throws {
        directory = dataDir + "/raft"
        self.sync = sync
        try DataDir.createPrivateDirectory(directory)
        for name in ["", "/hardstate", "/log", "/snapshot", "/hardstate.tmp", "/log.tmp", "/snapshot.tmp"] {
            DataDir.narrow(directory + name)
        }
    }

    public var location: String { String(directory.dropLast("raft".count)) }

    public func read(_ name: String, limit: Int) throws(DataDirError) -> [UInt8]? {
        try DataDirFiles.read(directory + "/" + name, file: "raft/" + name, limit: limit)
    }

    public func append(_ name: String, _ bytes: [UInt8]) throws {
        let path = directory + "/" + name
        // A file this call creates is durable only once its directory entry
        // is: fdatasync covers the data, not the name (adversarial review).
        var created = false
        var fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW)
        if fd < 0 && errno == ENOENT {
            fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0o600)
            created = fd >= 0
        }
        guard fd >= 0 else { throw Self.failure("open", path) }
        defer { close(fd) }
        try Self.writeAll(fd, bytes, path: path)
        guard sync.fdatasync(fd, DiskSync.File(raftName: name)) else { throw Self.failure("fdatasync", path) }
        if created { try syncDirectory() }
    }

    private func syncDirectory() throws {
        let dirFd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dirFd >= 0 else { throw Self.failure("open", directory) }
        defer { close(dirFd) }
        guard sync.fsync(dirFd, .raftDirectory) else { throw Self.failure("fsync", directory) }
    }

    public func replace(_ name: String, with bytes: [UInt8]) throws {
        let path = directory + "/" + name
        let temp = path + ".tmp"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw Self.failure("cannot write", temp) }
        do {
            try Self.writeAll(fd, bytes, path: temp)
            guard sync.fsync(fd, DiskSync.File(raftName: name)) else { throw Self.failure("fsync", temp) }
        } catch {
            close(fd)
            throw error
        }
        close(fd)
        guard rename(temp, path) == 0 else { throw Self.failure("rename", temp) }
        // The rename is durable only once the directory is synced: a failure is an error, not a hope.
        try syncDirectory()
    }

    private static func failure(_ what: String, _ path: String) -> PulseError {
        PulseError.startup("\(what) \(path): \(String(cString: strerror(errno)))")
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws {
        try bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw failure("write", path)
                }
                offset += n
            }
        }
    }
}
