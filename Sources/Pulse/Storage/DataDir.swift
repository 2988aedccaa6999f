// Storage: the node's data directory. Holds the node id (when generated) and
// the committed tempo epoch, written atomically (temp file, fsync, rename,
// fsync of the directory) at start-up and on commits — never on the beat
// path. An exclusive lock file stops two processes sharing one directory.
import Foundation
import Glibc
import PulseCore

/// The on-disk state of one node.
final class DataDir {
    let path: String
    private var lockFd: Int32 = -1
    private let writer = DispatchQueue(label: "pulse.datadir.writer")

    init(path: String) throws {
        self.path = path
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        } catch {
            throw PulseError.startup("cannot create data dir \(path): \(error.localizedDescription)")
        }
        lockFd = open(path + "/LOCK", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard lockFd >= 0 else {
            throw PulseError.startup("cannot open \(path)/LOCK: \(String(cString: strerror(errno)))")
        }
        guard flock(lockFd, LOCK_EX | LOCK_NB) == 0 else {
            close(lockFd)
            throw PulseError.startup("data dir \(path) is in use by another pulse process")
        }
    }

    deinit {
        if lockFd >= 0 { close(lockFd) }
    }

    /// The persisted node id, or a new one (`pulse-` and 6 random hex digits) saved now.
    func nodeId(preferring configured: String) throws -> String {
        if !configured.isEmpty { return configured }
        if let saved = read("node_id")?.trimmingCharacters(in: .whitespacesAndNewlines), !saved.isEmpty {
            return saved
        }
        let generated = "pulse-" + String(format: "%06x", UInt32.random(in: 0...0xff_ffff))
        try writeAtomically("node_id", Data((generated + "\n").utf8))
        return generated
    }

    /// The stored timeline identity, if any.
    struct StoredEpoch: Codable, Equatable {
        var clusterId: String
        var startBeat: Int64
        var startNs: Int64
        var bpm: Int64
        var bar: Int
        /// A committed tempo change not yet applied (beat index and bpm), if any.
        var pendingAtBeat: Int64?
        var pendingBpm: Int64?
        var pendingJustification: String?
    }

    func loadEpoch() throws -> StoredEpoch? {
        guard let text = read("epoch.json") else { return nil }
        do {
            return try JSONDecoder().decode(StoredEpoch.self, from: Data(text.utf8))
        } catch {
            throw PulseError.startup("\(path)/epoch.json is corrupt: \(error.localizedDescription)")
        }
    }

    func saveEpoch(_ epoch: StoredEpoch) throws {
        try writeAtomically("epoch.json", try Self.encode(epoch))
    }

    static func encode(_ epoch: StoredEpoch) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(epoch)
    }

    /// Writes off the loop thread on a serial queue (writes stay in order),
    /// then reports on the loop thread. For commits: the disk sync never
    /// blocks the loop.
    func saveEpochInBackground(_ epoch: StoredEpoch, loop: EventLoop, then done: @escaping (Error?) -> Void) {
        writer.async {
            var failure: Error?
            do { try self.saveEpoch(epoch) } catch { failure = error }
            if !loop.postCallback({ done(failure) }) {
                // The doorway is full only if the loop is wedged; report it there anyway later.
                loop.postCallback { done(PulseError.startup("doorway full")) }
            }
        }
    }

    private func read(_ name: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path + "/" + name) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// Writes `name` so that a crash leaves either the old or the new content.
    func writeAtomically(_ name: String, _ data: Data) throws {
        let final = path + "/" + name
        let temp = final + ".tmp"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
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
            return fsync(fd) == 0
        }
        close(fd)
        guard ok, rename(temp, final) == 0 else {
            throw PulseError.startup("cannot write \(final): \(String(cString: strerror(errno)))")
        }
        let dirFd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFd >= 0 {
            fsync(dirFd)
            close(dirFd)
        }
    }
}
