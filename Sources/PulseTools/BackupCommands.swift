import ArgumentParser
import Foundation
import Glibc
// PulseTools/BackupCommands.swift — owns `pulse backup` and `pulse restore`
// (docs/operations.md#backup-and-restore).
//
// `pulse backup --admin URL[,URL…] --out F`: asks each node in turn for
// `GET /backup` (with the admin token) until the leader (or a single node)
// answers, validates the answer as `restore` will, and writes it to F
// without ever replacing an existing file.
//
// `pulse restore --from F --data-dir D [--node-id ID] [--peers P]`: seeds
// the data dir of one node of a NEW cluster. The file is validated
// completely first (`BackupFile.parse`: version, checksum, every range); a
// refusal is one line and exit status 2, and so is a data dir that is not
// empty (nothing is ever overwritten). It writes a Raft snapshot of the
// backed-up state and a fresh hard state (no vote, committed up to the
// snapshot, a term one below --min-term) through the node's own `RaftStore`,
// so the new cluster's first leader starts from that state instead of
// bootstrapping a new epoch, and publishes with a term at least --min-term
// (default: the backup's + 2, above a handover as the old cluster stops).
// Without --peers the same snapshot seeds a single node, a one-voter
// cluster (issue 19: consumers fence on the term, so a restored single node
// publishes above the old one's too). It reads what it wrote back through
// the node's own loader before it says done.
import Pulse
import PulseCore
import Raft

/// `pulse backup` options.
struct BackupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pulse backup")

    @Option(
        name: FlagName.both("admin"),
        help:
            "Admin API URLs of the cluster's nodes, comma-separated; the leader answers"
    )
    var admin = "http://127.0.0.1:8080"
    @Option(name: FlagName.both("out"), help: "File to write (must not exist)")
    var out: String
    @OptionGroup var access: AdminAccessOptions
    @Option(name: FlagName.both("timeout-ms"), help: "Timeout of each request, in ms")
    var timeoutMs = 5000

    /// Takes the backup; returns the exit status (0, or 1 when no node gave one).
    func run(environment: [String: String]) throws -> Int32 {
        guard (1...60_000).contains(timeoutMs) else { throw PulseError.config("--timeout-ms must be 1...60000") }
        let urls = try AdminClient.urls(admin)
        guard !FileManager.default.fileExists(atPath: out) else {
            throw PulseError.config("\(out) exists; a backup never replaces a file (choose a new name)")
        }
        let settings = try access.settings(timeoutMs: timeoutMs, environment: environment)
        var failures: [String] = []
        nodes: for url in urls {
            switch fetch(url: url, settings) {
            case .success(let (file, bytes)):
                try BackupWriter.writeNew(out, bytes)
                print(
                    "backup of cluster \(file.clusterId) from \(file.nodeId) at Raft index \(file.index), term \(file.term): "
                        + BackupSummary.timeline(file) + "; written to \(out)")
                return 0
            case .failure(let failure):
                failures.append("\(url): \(failure.message)")
                if failure.final { break nodes }
            }
        }
        throw PulseError.startup("no backup taken: " + failures.joined(separator: "; "))
    }

    private struct Failure: Error {
        var message: String
        /// No other node would answer differently (e.g. a wrong token).
        var final = false
    }

    /// One node: its backup, validated, or why not. A leader still applying
    /// its log is asked again for up to two seconds.
    private func fetch(url: String, _ settings: AdminClient.Settings) -> Result<(BackupFile, [UInt8]), Failure> {
        let deadline = Date().addingTimeInterval(2)
        while true {
            let response: AdminClient.Response
            do {
                response = try AdminClient.get(url: url, path: "/backup", settings)
            } catch {
                return .failure(Failure(message: "\(error)"))
            }
            let code =
                (try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any])?["code"] as? String
            switch response.status {
            case 200:
                do {
                    return .success((try BackupFile.parse(response.body), response.body))
                } catch {
                    return .failure(Failure(message: "answered a backup that does not validate: \(error)"))
                }
            case 401:
                return .failure(
                    Failure(
                        message:
                            "unauthorized: give --token, --token-file or BACKBEAT_ADMIN_TOKEN(_FILE) (the nodes' -admin-token)",
                        final: true))
            case 503 where code == "not_caught_up" && Date() < deadline:
                usleep(100_000)
            default:
                let message =
                    (try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any])?["error"]
                    as? String
                return .failure(
                    Failure(message: "\(response.status) \(message ?? DataDirFiles.oneLine(response.text))"))
            }
        }
    }
}

/// `pulse restore` options.
struct RestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pulse restore")

    @Option(name: FlagName.both("from"), help: "Backup file written by pulse backup")
    var from: String
    @Option(name: FlagName.both("data-dir"), help: "The new node's data dir (must not exist, or be empty)")
    var dataDir: String
    @Option(name: FlagName.both("node-id"), help: "The new node's id (written to the data dir)")
    var nodeId: String?
    @Option(
        name: FlagName.both("peers"),
        help: "The new cluster's -peers (without: a single node, a one-voter cluster)")
    var peers: String?
    @Option(
        name: FlagName.both("min-term"),
        help:
            "Lowest term the new cluster publishes with (default: the backup's + 2; give the old cluster's last term + 1 if it went higher)"
    )
    var minTerm: UInt64?

    /// Everything checked before anything is written: the file, the ids, the peers, the data dir.
    func validated() throws -> (BackupFile, peers: [String], minTerm: UInt64) {
        let bytes: [UInt8]
        do {
            guard let read = try DataDirFiles.read(from, file: from, limit: BackupFile.maxBytes + 1) else {
                throw PulseError.config("\(from): no such file")
            }
            bytes = read
        } catch let error as DataDirError {
            throw PulseError.config("\(from): \(error.detail)")
        }
        let file: BackupFile
        do {
            file = try BackupFile.parse(bytes)
        } catch {
            throw PulseError.config("\(from): \(error.detail); nothing restored")
        }
        if let nodeId { try PulseConfig.checkToken(nodeId, what: "--node-id") }
        let specs = (peers ?? "").split(separator: ",").map(String.init).filter { !$0.isEmpty }
        if peers != nil && specs.isEmpty { throw PulseError.config("--peers is empty") }
        let parsed = try specs.map { try PeerList.parsePeer($0) }
        if let nodeId, parsed.contains(where: \.hasId), !parsed.contains(where: { $0.name == nodeId }) {
            throw PulseError.config("--node-id \(nodeId) is not named in --peers")
        }
        let minTerm = minTerm ?? file.defaultMinTerm
        if self.minTerm != nil {
            guard minTerm > file.term, minTerm < BackupFile.absurd else {
                throw PulseError.config("--min-term must be above the backup's term \(file.term) and below 2^62")
            }
        }
        try Self.checkEmpty(dataDir)
        return (file, specs, minTerm)
    }

    /// A data dir is seeded only when it does not exist or is an empty directory.
    static func checkEmpty(_ path: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return }
        guard isDirectory.boolValue else { throw PulseError.config("\(path) exists and is not a directory") }
        let contents = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? ["?"]
        guard contents.isEmpty else {
            throw PulseError.config(
                "data dir \(path) is not empty: restore only seeds a new node's data dir, it never overwrites one")
        }
    }

    /// Restores; returns the exit status (0). Throws `.config` for refusals
    /// (exit 2, nothing written) and `.startup` for a write that failed
    /// (exit 1, what was written removed).
    func run() throws -> Int32 {
        let (file, specs, minTerm) = try validated()
        let existed = FileManager.default.fileExists(atPath: dataDir)
        do {
            try seed(file, minTerm: minTerm)
        } catch {
            // Leave the directory as it was: absent, or empty.
            if existed {
                for name in (try? FileManager.default.contentsOfDirectory(atPath: dataDir)) ?? [] {
                    try? FileManager.default.removeItem(atPath: dataDir + "/" + name)
                }
            } else {
                try? FileManager.default.removeItem(atPath: dataDir)
            }
            throw PulseError.startup("restore into \(dataDir) failed, nothing kept: \(error)")
        }
        let where_ =
            "a Raft snapshot at index \(file.raftSnapshot.index), term \(file.raftSnapshot.term) (frames from term \(minTerm) on"
            + (specs.isEmpty ? "; a single node, its one voter)" : ")")
        print("restored cluster \(file.clusterId) into \(dataDir) as \(where_): " + BackupSummary.timeline(file))
        let phases = file.phases.joined(separator: ",")
        var start = "-cluster \(file.clusterId) -bar \(file.bar) -phases \(phases) -data-dir \(dataDir)"
        if let nodeId { start += " -node-id \(nodeId)" }
        if !specs.isEmpty { start += " -peers \(specs.joined(separator: ","))" }
        print("start the node with: \(start)")
        return 0
    }

    /// Writes the data dir under its lock, then loads it back with the node's own loaders.
    private func seed(_ file: BackupFile, minTerm: UInt64) throws {
        try RaftStore.seed(
            dataDir: dataDir, nodeId: nodeId, hardState: file.raftHardState(minTerm: minTerm),
            snapshot: file.raftSnapshot)
    }
}

/// One line about a backup's timeline, for people.
enum BackupSummary {
    static func timeline(_ file: BackupFile) -> String {
        let start = RFC3339.string(unixMs: file.epoch.startNs / 1_000_000)
        var text = "epoch beat \(file.epoch.startBeat) at \(start), \(file.epoch.bpm) bpm, bar \(file.bar)"
        if let pending = file.pending {
            text += ", change to \(pending.bpm) bpm at beat \(pending.atBeat)"
        }
        if let last = file.lastBeat { text += ", last beat \(last)" }
        return text
    }
}

/// Writes a file that must not exist yet: a temp file, synced, then
/// `link(2)`, which fails if the name was taken meanwhile (never replaces).
enum BackupWriter {
    static func writeNew(_ path: String, _ bytes: [UInt8]) throws {
        let temp = path + ".tmp-\(getpid())"
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw PulseError.startup("cannot write \(temp): \(String(cString: strerror(errno)))") }
        defer { unlink(temp) }
        var offset = 0
        var ok = true
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                ok = false
                break
            }
            offset += n
        }
        ok = ok && fsync(fd) == 0
        close(fd)
        guard ok else { throw PulseError.startup("cannot write \(temp): \(String(cString: strerror(errno)))") }
        guard link(temp, path) == 0 else {
            throw PulseError.startup("cannot create \(path): \(String(cString: strerror(errno)))")
        }
    }
}
