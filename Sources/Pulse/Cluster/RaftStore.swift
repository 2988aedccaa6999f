// Cluster: Raft's stable storage in `<data-dir>/raft/`.
//
//   hardstate  term, vote, commit            rewritten atomically
//   snapshot   index, term, state bytes      rewritten atomically
//   log        append-only records           [len u32][sum 8][index u64][term u64][kind u8][data]
//
// Every record and file carries a checksum (the first 8 bytes of SHA-256,
// from swift-crypto). On load, a log tail that is torn (short) or corrupt is
// cut off at the last good record: Raft only ever acknowledged what was
// synced, so what follows a bad record was never promised to anyone. A bad
// hard state or snapshot is an error (the node refuses to start rather than
// vote twice). Writes and fsyncs run on the store's own serial queue, never
// on the loop thread; the caller learns of completion through the loop.
import Crypto
import Foundation
import Glibc
import Raft

/// What a node persisted, as loaded at start-up.
struct RaftPersisted {
    var hardState = HardState()
    var snapshot: Snapshot?
    var entries: [Entry] = []
    /// Bytes cut from a torn or corrupt log tail at load (0 when clean).
    var truncatedBytes = 0
}

/// Durable Raft state; all mutation happens on `queue`.
final class RaftStore {
    let directory: String
    private let queue = DispatchQueue(label: "pulse.raft.store")
    /// The stable log as on disk (owned by `queue`).
    private var stable: [Entry] = []
    private var snapshotIndex: UInt64 = 0

    init(dataDir: String) throws {
        directory = dataDir + "/raft"
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw PulseError.startup("cannot create \(directory): \(error.localizedDescription)")
        }
    }

    static func checksum(_ bytes: some Sequence<UInt8>) -> UInt64 {
        let digest = SHA256.hash(data: Array(bytes))
        return digest.withUnsafeBytes { raw in raw.loadUnaligned(as: UInt64.self) }
    }

    // MARK: load (start-up, before the loop runs)

    func load() throws -> RaftPersisted {
        var persisted = RaftPersisted()
        if let bytes = read("hardstate") {
            guard bytes.count == 32, Self.checksum(bytes[0..<24]) == Self.u64(bytes, 24) else {
                throw PulseError.startup(
                    "\(directory)/hardstate is corrupt; refusing to start (it holds this node's vote)")
            }
            persisted.hardState = HardState(
                term: Self.u64(bytes, 0), vote: Self.u64(bytes, 8), commit: Self.u64(bytes, 16))
        }
        if let bytes = read("snapshot") {
            guard bytes.count >= 24, Self.checksum(bytes[8...]) == Self.u64(bytes, 0) else {
                throw PulseError.startup("\(directory)/snapshot is corrupt; refusing to start")
            }
            let snapshot = Snapshot(index: Self.u64(bytes, 8), term: Self.u64(bytes, 16), data: Array(bytes[24...]))
            persisted.snapshot = snapshot
            snapshotIndex = snapshot.index
        }
        let bytes = read("log") ?? []
        var offset = 0
        var entries: [Entry] = []
        while offset + 12 <= bytes.count {
            let length = Int(Self.u32(bytes, offset))
            let start = offset + 12
            guard length >= 17, length <= 64 << 20, start + length <= bytes.count,
                Self.checksum(bytes[start..<(start + length)]) == Self.u64(bytes, offset + 4),
                let kind = EntryKind(rawValue: bytes[start + 16])
            else { break }
            let entry = Entry(
                index: Self.u64(bytes, start), term: Self.u64(bytes, start + 8), kind: kind,
                data: Array(bytes[(start + 17)..<(start + length)]))
            // A later record for an index replaces the earlier ones (a
            // truncation written as a rewrite never leaves these, but be safe).
            if let last = entries.last, entry.index <= last.index {
                entries.removeLast(Int(last.index - entry.index) + 1)
            }
            entries.append(entry)
            offset = start + length
        }
        if offset < bytes.count {
            persisted.truncatedBytes = bytes.count - offset
            try rewriteLog(entries)
        }
        entries.removeAll { $0.index <= snapshotIndex }
        stable = entries
        persisted.entries = entries
        return persisted
    }

    // MARK: save (any thread; runs on the store's queue)

    /// Persists a Ready's snapshot, entries and hard state, synced, then
    /// calls `done` on the store's queue (the caller hops to its loop).
    func save(hardState: HardState?, snapshot: Snapshot?, entries: [Entry], done: @escaping (Error?) -> Void) {
        queue.async { [self] in
            do {
                if let snapshot {
                    var bytes = [UInt8]()
                    Self.put(&bytes, snapshot.index)
                    Self.put(&bytes, snapshot.term)
                    bytes += snapshot.data
                    var file = [UInt8]()
                    Self.put(&file, Self.checksum(bytes))
                    file += bytes
                    try writeAtomically("snapshot", file)
                    snapshotIndex = snapshot.index
                    stable.removeAll { $0.index <= snapshot.index }
                    try rewriteLog(stable)
                }
                if let first = entries.first {
                    if let last = stable.last, first.index <= last.index {
                        stable.removeAll { $0.index >= first.index }
                        stable += entries
                        try rewriteLog(stable)
                    } else {
                        stable += entries
                        try append(entries)
                    }
                }
                if let hardState {
                    var bytes = [UInt8]()
                    Self.put(&bytes, hardState.term)
                    Self.put(&bytes, hardState.vote)
                    Self.put(&bytes, hardState.commit)
                    Self.put(&bytes, Self.checksum(bytes))
                    try writeAtomically("hardstate", bytes)
                }
                done(nil)
            } catch {
                done(error)
            }
        }
    }

    /// Drops log records up to `index` (after a snapshot was taken there).
    func compact(upTo index: UInt64, snapshot: Snapshot) {
        save(hardState: nil, snapshot: snapshot, entries: [], done: { _ in })
    }

    private func record(_ entry: Entry) -> [UInt8] {
        var payload = [UInt8]()
        Self.put(&payload, entry.index)
        Self.put(&payload, entry.term)
        payload.append(entry.kind.rawValue)
        payload += entry.data
        var out = [UInt8]()
        var length = UInt32(payload.count).littleEndian
        withUnsafeBytes(of: &length) { out += $0 }
        Self.put(&out, Self.checksum(payload))
        return out + payload
    }

    private func append(_ entries: [Entry]) throws {
        let path = directory + "/log"
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw PulseError.startup("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = entries.flatMap(record)
        try writeAll(fd, bytes, path: path)
        guard fdatasync(fd) == 0 else {
            throw PulseError.startup("fdatasync \(path): \(String(cString: strerror(errno)))")
        }
    }

    private func rewriteLog(_ entries: [Entry]) throws {
        try writeAtomically("log", entries.flatMap(record))
    }

    private func writeAtomically(_ name: String, _ bytes: [UInt8]) throws {
        let path = directory + "/" + name
        let temp = path + ".tmp"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw PulseError.startup("cannot write \(temp): \(String(cString: strerror(errno)))") }
        do {
            try writeAll(fd, bytes, path: temp)
            guard fsync(fd) == 0 else { throw PulseError.startup("fsync \(temp): \(String(cString: strerror(errno)))") }
        } catch {
            close(fd)
            throw error
        }
        close(fd)
        guard rename(temp, path) == 0 else {
            throw PulseError.startup("rename \(temp): \(String(cString: strerror(errno)))")
        }
        let dirFd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFd >= 0 {
            fsync(dirFd)
            close(dirFd)
        }
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws {
        try bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw PulseError.startup("write \(path): \(String(cString: strerror(errno)))")
                }
                offset += n
            }
        }
    }

    private func read(_ name: String) -> [UInt8]? {
        FileManager.default.contents(atPath: directory + "/" + name).map { [UInt8]($0) }
    }

    static func put(_ out: inout [UInt8], _ value: UInt64) {
        var little = value.littleEndian
        withUnsafeBytes(of: &little) { out += $0 }
    }

    static func u64(_ bytes: some Collection<UInt8>, _ offset: Int) -> UInt64 {
        var value: UInt64 = 0
        var i = bytes.index(bytes.startIndex, offsetBy: offset)
        for shift in stride(from: 0, to: 64, by: 8) {
            value |= UInt64(bytes[i]) << UInt64(shift)
            i = bytes.index(after: i)
        }
        return value
    }

    static func u32(_ bytes: [UInt8], _ offset: Int) -> UInt32 {
        UInt32(bytes[offset]) | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]) << 16
            | UInt32(bytes[offset + 3]) << 24
    }
}
