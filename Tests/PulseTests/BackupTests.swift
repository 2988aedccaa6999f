// The backup file format (`backbeat.backup.v1`) and `pulse restore` in
// process: a round trip, an independent checksum (Python's json and
// hashlib), every corruption refused with its reason (never a trap), the
// data dirs restore writes read back by the node's own loaders, and
// `GET /backup` behind the admin token.
import CHttpParser
import Foundation
import PulseCore
import PulsePolicy
import Raft
import XCTest

@testable import Pulse
@testable import PulseTools

final class BackupTests: XCTestCase {
    /// A cluster's backup with a pending change whose justification needs escaping.
    static let sample = BackupFile(
        clusterId: "chorus-1", nodeId: "n2", bar: 4, phases: ["plan", "work", "review"],
        epoch: .init(startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 120),
        pending: .init(atBeat: 64, bpm: 126, justification: "load / é \"peak\"\nsecond line"),
        term: 7, index: 42, lastBeat: 61, takenAtNs: 1_700_000_030_123_456_789)

    private func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    private func refusal(_ bytes: [UInt8]) -> BackupError? {
        do {
            _ = try BackupFile.parse(bytes)
            return nil
        } catch {
            return error
        }
    }

    private func assertRefused(
        _ bytes: [UInt8], _ reason: String, _ what: String, file: StaticString = #filePath, line: UInt = #line
    ) {
        guard let error = refusal(bytes) else {
            return XCTFail("accepted: \(what)\n\(text(bytes))", file: file, line: line)
        }
        XCTAssertEqual(error.reason, reason, "\(what): \(error.detail)", file: file, line: line)
        XCTAssertFalse(error.detail.contains("\n"), "one line", file: file, line: line)
    }

    /// The sample as JSON, changed by `edit`, written back (the checksum is not recomputed).
    private func edited(_ edit: (inout [String: Any]) -> Void) throws -> [UInt8] {
        var object = try XCTUnwrap(
            JSONSerialization.jsonObject(with: Data(try Self.sample.encoded())) as? [String: Any])
        edit(&object)
        return [UInt8](try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))
    }

    /// A file with `change` applied to its fields and a correct checksum
    /// (as a careless hand edit that recomputes it would produce).
    private func resealed(_ change: (inout Wire) -> Void) throws -> [UInt8] {
        let good = try Self.sample.encoded()
        var wire = try JSONDecoder().decode(Wire.self, from: Data(good))
        change(&wire)
        wire.checksum = BackupFile.checksum(of: wire)
        return [UInt8](try JSONEncoder().encode(wire))
    }

    // MARK: format

    func testRoundTrip() throws {
        let bytes = try Self.sample.encoded()
        XCTAssertEqual(try BackupFile.parse(bytes), Self.sample)
        XCTAssertEqual(bytes.last, UInt8(ascii: "\n"))
        // Absent values are explicit nulls, and survive the trip.
        var bare = Self.sample
        bare.pending = nil
        bare.lastBeat = nil
        bare.index = 0
        bare.term = 1
        let bareBytes = try bare.encoded()
        XCTAssertTrue(text(bareBytes).contains("\"pending\" : null"), text(bareBytes))
        XCTAssertTrue(text(bareBytes).contains("\"last_beat\" : null"), text(bareBytes))
        XCTAssertEqual(try BackupFile.parse(bareBytes), bare)
        // Re-indented (compact, other key order): the same values, accepted.
        let object = try JSONSerialization.jsonObject(with: Data(bytes))
        let compact = [UInt8](try JSONSerialization.data(withJSONObject: object, options: [.withoutEscapingSlashes]))
        XCTAssertNotEqual(compact, bytes)
        XCTAssertEqual(try BackupFile.parse(compact), Self.sample)
        let keys = Set(try XCTUnwrap(object as? [String: Any]).keys)
        XCTAssertEqual(
            keys,
            [
                "format", "cluster_id", "node_id", "bar", "phases", "epoch", "pending", "term", "index", "last_beat",
                "taken_at_ns", "taken_at", "checksum",
            ])
        XCTAssertTrue(text(bytes).contains("\"format\" : \"backbeat.backup.v1\""))
        XCTAssertTrue(text(bytes).contains("\"taken_at\" : \"2023-11-14T22:13:50.123Z\""), text(bytes))
    }

    /// The checksum as documented, computed by another implementation.
    func testChecksumMatchesPythonsCanonicalJSON() throws {
        let python = "/usr/bin/python3"
        guard FileManager.default.isExecutableFile(atPath: python) else { throw XCTSkip("no python3") }
        let dir = Harness.tempDir("backup-py")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(try Self.sample.encoded()).write(to: URL(fileURLWithPath: dir + "/b.json"))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [
            "-c",
            """
            import json, hashlib, sys
            o = json.load(open(sys.argv[1], encoding="utf-8"))
            given = o.pop("checksum")
            text = json.dumps(o, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            print(given == "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest())
            """,
            dir + "/b.json",
        ]
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        process.waitUntilExit()
        let answer = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        XCTAssertEqual(answer.trimmingCharacters(in: .whitespacesAndNewlines), "True")
    }

    // MARK: refusals

    func testVersionShapeAndChecksumRefusals() throws {
        assertRefused([UInt8](repeating: 0x20, count: BackupFile.maxBytes + 1), "too_large", "65 KiB")
        assertRefused(Array("not json".utf8), "bad_json", "text")
        assertRefused(Array("[1,2]".utf8), "bad_json", "an array")
        assertRefused([], "bad_json", "empty")
        assertRefused(Array("{}".utf8), "not_a_backup", "no format")
        assertRefused(try edited { $0["format"] = "backbeat.timeline.v1" }, "not_a_backup", "a timeline")
        assertRefused(try edited { $0["format"] = "backbeat.backup.v2" }, "unsupported_version", "v2")
        assertRefused(try edited { $0["format"] = 1 }, "not_a_backup", "format not a string")
        for key in ["cluster_id", "node_id", "bar", "phases", "epoch", "pending", "term", "index", "last_beat"]
            + ["taken_at_ns", "taken_at", "checksum"]
        {
            assertRefused(try edited { $0.removeValue(forKey: key) }, "missing_field", "without \(key)")
        }
        assertRefused(
            try edited { $0["epoch"] = ["start_beat": 0, "bpm": 120] }, "missing_field", "epoch without start_ns")
        assertRefused(try edited { $0["bar"] = "4" }, "wrong_type", "bar as a string")
        // A number that does not fit the field's type (as the data dir's parsers say it).
        assertRefused(try edited { $0["term"] = -1 }, "bad_json", "negative term")
        assertRefused(try edited { $0["bar"] = 4.5 }, "bad_json", "fractional bar")
        assertRefused(try edited { $0["epoch"] = "x" }, "wrong_type", "epoch as a string")
        assertRefused(try edited { $0["extra"] = 1 }, "unknown_field", "an unknown key")
        assertRefused(
            try edited {
                var epoch = $0["epoch"] as! [String: Any]
                epoch["start_at"] = "x"
                $0["epoch"] = epoch
            }, "unknown_field", "an unknown key in epoch")
        assertRefused(
            try edited {
                var pending = $0["pending"] as! [String: Any]
                pending["at"] = 1
                $0["pending"] = pending
            }, "unknown_field", "an unknown key in pending")
        // Every value changed without recomputing the checksum.
        let changes: [(String, (inout [String: Any]) -> Void)] = [
            ("cluster_id", { $0["cluster_id"] = "chorus-2" }),
            ("node_id", { $0["node_id"] = "n3" }),
            ("bar", { $0["bar"] = 8 }),
            ("phases", { $0["phases"] = ["plan", "work"] }),
            ("epoch.bpm", { $0["epoch"] = ["start_beat": 0, "start_ns": 1_700_000_000_000_000_000, "bpm": 121] }),
            ("epoch.start_ns", { $0["epoch"] = ["start_beat": 0, "start_ns": 1_700_000_000_000_000_001, "bpm": 120] }),
            ("pending", { $0["pending"] = NSNull() }),
            (
                "pending.bpm",
                { $0["pending"] = ["at_beat": 64, "bpm": 125, "justification": "load"] as [String: Any] }
            ),
            ("term", { $0["term"] = 8 }),
            ("index", { $0["index"] = 41 }),
            ("last_beat", { $0["last_beat"] = NSNull() }),
            ("taken_at_ns", { $0["taken_at_ns"] = 1_700_000_030_123_456_788 }),
            ("checksum", { $0["checksum"] = "sha256:" + String(repeating: "0", count: 64) }),
            ("checksum form", { $0["checksum"] = "md5:0" }),
        ]
        for (what, change) in changes { assertRefused(try edited(change), "bad_checksum", what) }
    }

    func testEveryRangeRefusedEvenWithAValidChecksum() throws {
        let cases: [(String, String, (inout Wire) -> Void)] = [
            ("bad_cluster_id", "cluster id with a dot", { $0.cluster_id = "a.b" }),
            ("bad_cluster_id", "empty cluster id", { $0.cluster_id = "" }),
            ("bad_node_id", "node id with a space", { $0.node_id = "n 1" }),
            ("bar_out_of_range", "bar 0", { $0.bar = 0 }),
            ("bar_out_of_range", "bar 1025", { $0.bar = 1025 }),
            ("bad_phases", "no phases", { $0.phases = [] }),
            ("bad_phases", "more phases than beats", { $0.phases = ["a", "b", "c", "d", "e"] }),
            ("bad_phases", "an empty phase", { $0.phases = ["plan", ""] }),
            ("bad_phases", "a phase with a comma", { $0.phases = ["plan,work"] }),
            ("bad_phases", "a 65-byte phase", { $0.phases = [String(repeating: "p", count: 65)] }),
            ("bpm_out_of_range", "bpm 0", { $0.epoch.bpm = 0 }),
            ("bpm_out_of_range", "bpm 6001", { $0.epoch.bpm = 6001 }),
            ("instant_out_of_range", "start before 1970", { $0.epoch.start_ns = -1 }),
            ("instant_out_of_range", "start after 2200", { $0.epoch.start_ns = Int64.max }),
            ("beat_out_of_range", "start beat 2^48 + 1", { $0.epoch.start_beat = (1 << 48) + 1 }),
            ("beat_out_of_range", "negative start beat", { $0.epoch.start_beat = -1 }),
            ("bad_pending", "change not at a downbeat", { $0.pending?.at_beat = 65 }),
            ("bad_pending", "change before the epoch", { $0.epoch.start_beat = 64 }),
            ("bpm_out_of_range", "change to 0 bpm", { $0.pending?.bpm = 0 }),
            ("beat_out_of_range", "change beyond the timeline", { $0.pending?.at_beat = Int64.max - 3 }),
            (
                "justification_too_long", "justification of 1025 bytes",
                { $0.pending?.justification = String(repeating: "j", count: 1025) }
            ),
            ("term_out_of_range", "term 0", { $0.term = 0 }),
            ("term_out_of_range", "term 2^62", { $0.term = 1 << 62 }),
            ("index_out_of_range", "index 2^62", { $0.index = 1 << 62 }),
            ("beat_out_of_range", "last beat -1", { $0.last_beat = -1 }),
            ("instant_out_of_range", "taken before 1970", { $0.taken_at_ns = -5 }),
            ("bad_taken_at", "taken_at not taken_at_ns", { $0.taken_at = "2020-01-01T00:00:00.000Z" }),
        ]
        for (reason, what, change) in cases { assertRefused(try resealed(change), reason, what) }
        // The resealing itself is sound: an unchanged file passes.
        XCTAssertEqual(try BackupFile.parse(try resealed { _ in }), Self.sample)
        // A node never hands out what restore refuses.
        var bad = Self.sample
        bad.bar = 0
        XCTAssertThrowsError(try bad.encoded())
    }

    /// Every truncation and every single-bit flip is refused, and nothing traps.
    func testTruncationsAndBitFlipsAreRefused() throws {
        let bytes = try Self.sample.encoded()
        for length in 0..<(bytes.count - 1) {
            XCTAssertNotNil(refusal(Array(bytes.prefix(length))), "truncated to \(length)")
        }
        var accepted: [String] = []
        for i in bytes.indices {
            for bit in 0..<8 {
                var flipped = bytes
                flipped[i] ^= 1 << bit
                if refusal(flipped) == nil { accepted.append("byte \(i) bit \(bit)") }
            }
        }
        XCTAssertEqual(accepted, [], "flips accepted")
    }

    // MARK: restore (in process)

    private func restore(_ arguments: [String]) throws -> Int32 {
        try RestoreCommand.parse(arguments).run()
    }

    private func writeSample(
        _ dir: String, _ file: BackupFile = BackupTests.sample, name: String = "backup.json"
    ) throws -> String {
        let path = dir + "/" + name
        try Data(try file.encoded()).write(to: URL(fileURLWithPath: path))
        return path
    }

    func testRestoreSeedsARaftSnapshotTheNodeLoads() throws {
        let dir = Harness.tempDir("restore-raft")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let from = try writeSample(dir)
        let peers = "n1@127.0.0.1:7001,n2@127.0.0.1:7002,n3@127.0.0.1:7003"
        XCTAssertEqual(
            try restore(["--from", from, "--data-dir", dir + "/n1", "--node-id", "n1", "--peers", peers]), 0)
        // The node's own loader and parser accept it.
        let loaded = try RaftStore(dataDir: dir + "/n1").load()
        let snapshot = try XCTUnwrap(loaded.snapshot)
        XCTAssertEqual(snapshot.index, 42)
        XCTAssertEqual(snapshot.term, 7)
        // Term: one below the default --min-term (the backup's + 2): the first election reaches it.
        XCTAssertEqual(loaded.hardState, HardState(term: 8, vote: noNode, commit: 42))
        XCTAssertEqual(loaded.entries, [])
        let state = try JSONDecoder().decode(ClusterState.self, from: Data(snapshot.data))
        XCTAssertEqual(state.epoch, TempoEpoch.Stored(startBeat: 0, startNs: 1_700_000_000_000_000_000, bpm: 120))
        XCTAssertEqual(state.pending, TempoChange.Stored(atBeat: 64, bpm: 126))
        XCTAssertEqual(state.justification, "load / é \"peak\"\nsecond line")
        let file = try Data(contentsOf: URL(fileURLWithPath: dir + "/n1/raft/snapshot"))
        XCTAssertEqual(try RaftStore.parseSnapshot([UInt8](file)), snapshot)
        XCTAssertEqual(
            try DataDirFiles.parseNodeId([UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/n1/node_id")))), "n1"
        )
        // The Raft core starts from it: the next entry is after the backup's index, in a later term.
        let raft = try RaftNode(
            config: Config(id: PeerList.stableId("n1"), voters: ["n1", "n2", "n3"].map(PeerList.stableId)),
            hardState: loaded.hardState, snapshot: loaded.snapshot, entries: loaded.entries)
        XCTAssertEqual(raft.lastIndex, 42)
        XCTAssertEqual(raft.commitIndex, 42)
        // --min-term raises the term (an old cluster that went on electing).
        XCTAssertEqual(
            try restore(["--from", from, "--data-dir", dir + "/k1", "--peers", peers, "--min-term", "30"]), 0)
        XCTAssertEqual(
            try RaftStore(dataDir: dir + "/k1").load().hardState, HardState(term: 29, vote: noNode, commit: 42))
        // A single node's backup (no log) seeds index 1.
        var single = Self.sample
        single.index = 0
        single.term = 1
        let fromSingle = try writeSample(dir, single, name: "single.json")
        XCTAssertEqual(try restore(["--from", fromSingle, "--data-dir", dir + "/m1", "--peers", peers]), 0)
        let seeded = try XCTUnwrap(try RaftStore(dataDir: dir + "/m1").load().snapshot)
        XCTAssertEqual([seeded.index, seeded.term], [1, 1])
    }

    /// Without --peers: a single node is a one-voter cluster (issue 19), so
    /// the same Raft snapshot seeds it, with the term above the backup's.
    func testRestoreSeedsASingleNodesOneVoterLog() throws {
        let dir = Harness.tempDir("restore-single")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let from = try writeSample(dir)
        try FileManager.default.createDirectory(atPath: dir + "/empty", withIntermediateDirectories: false)
        XCTAssertEqual(try restore(["-from", from, "-data-dir", dir + "/empty"]), 0)
        let loaded = try RaftStore(dataDir: dir + "/empty").load()
        let snapshot = try XCTUnwrap(loaded.snapshot)
        let state = try JSONDecoder().decode(ClusterState.self, from: Data(snapshot.data))
        XCTAssertEqual(state.bar, 4)
        XCTAssertEqual(
            [state.epoch.startBeat, state.epoch.startNs, state.epoch.bpm], [0, 1_700_000_000_000_000_000, 120])
        XCTAssertEqual(state.pending, .init(atBeat: 64, bpm: 126))
        XCTAssertEqual(state.justification, "load / é \"peak\"\nsecond line")
        XCTAssertEqual(loaded.hardState.term, Self.sample.defaultMinTerm - 1)
        XCTAssertEqual(snapshot.members, [], "the node's own voter set (itself) applies")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/empty/epoch.json"))
    }

    func testRestoreRefusesBeforeWritingAnything() throws {
        let dir = Harness.tempDir("restore-refuse")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let from = try writeSample(dir)
        func refused(_ arguments: [String], _ expected: String, _ what: String) {
            do {
                _ = try restore(arguments)
                XCTFail("restored: \(what)")
            } catch let error as PulseError {
                guard case .config(let message) = error else { return XCTFail("\(what): not a refusal: \(error)") }
                XCTAssertTrue(message.contains(expected), "\(what): \(message)")
            } catch {
                XCTFail("\(what): \(error)")
            }
        }
        // A data dir that is not empty is never touched.
        try FileManager.default.createDirectory(atPath: dir + "/used", withIntermediateDirectories: false)
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/used/epoch.json"))
        refused(["--from", from, "--data-dir", dir + "/used"], "is not empty", "a used data dir")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir + "/used"), ["epoch.json"])
        refused(["--from", from, "--data-dir", from], "is not a directory", "a file as data dir")
        // A damaged file: nothing created.
        var bytes = try Self.sample.encoded()
        bytes[bytes.count / 2] ^= 1
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/bad.json"))
        refused(["--from", dir + "/bad.json", "--data-dir", dir + "/new"], "nothing restored", "a damaged file")
        refused(["--from", dir + "/absent.json", "--data-dir", dir + "/new"], "no such file", "no file")
        refused(["--from", from, "--data-dir", dir + "/new", "--node-id", "a b"], "--node-id", "a bad node id")
        refused(
            [
                "--from", from, "--data-dir", dir + "/new", "--node-id", "n9", "--peers",
                "n1@127.0.0.1:1,n2@127.0.0.1:2",
            ],
            "not named in --peers", "a node outside the peers")
        refused(["--from", from, "--data-dir", dir + "/new", "--peers", "nonsense"], "host:port", "bad peers")
        refused(
            ["--from", from, "--data-dir", dir + "/new", "--peers", "n1@127.0.0.1:1", "--min-term", "7"],
            "--min-term must be above", "a min term not above the backup's")
        // A single node is a one-voter cluster: --min-term holds for it too.
        refused(["--from", from, "--data-dir", dir + "/new", "--min-term", "7"], "--min-term must be above", "single")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/new"))
    }

    // MARK: GET /backup

    func testBackupRouteNeedsTheToken() throws {
        let backend = BackupBackend(answer: .file(try Self.sample.encoded()))
        let router = AdminRouter(backend: backend, authToken: "sekret", limits: AdminLimits())
        func get(_ authorization: String?, method: UInt32 = HTTP_GET.rawValue) -> AdminResponse {
            var answer: AdminResponse?
            router.handle(
                AdminRequest(
                    method: method, path: "/backup", body: [], authorization: authorization.map { Array($0.utf8) })
            ) { answer = $0 }
            return answer ?? AdminResponse(status: 0, contentType: nil, body: [])
        }
        XCTAssertEqual(get(nil).status, 401)
        XCTAssertEqual(get("Bearer wrong").status, 401)
        XCTAssertEqual(backend.calls, 0, "no backup taken without the token")
        let ok = get("Bearer sekret")
        XCTAssertEqual(ok.status, 200)
        XCTAssertEqual(ok.contentType, "application/json")
        XCTAssertEqual(try BackupFile.parse(ok.body), Self.sample)
        XCTAssertEqual(get("Bearer sekret", method: HTTP_POST.rawValue).status, 405)
        backend.answer = .refused(status: 409, code: "not_leader", message: "ask n1")
        let follower = get("Bearer sekret")
        XCTAssertEqual(follower.status, 409)
        XCTAssertTrue(String(decoding: follower.body, as: UTF8.self).contains("\"code\":\"not_leader\""))
        // Backends without backups (the default) answer 503.
        let open = AdminRouter(backend: FakeAdminBackend(), authToken: nil, limits: AdminLimits())
        var answer: AdminResponse?
        open.handle(AdminRequest(method: HTTP_GET.rawValue, path: "/backup", body: [], authorization: nil)) {
            answer = $0
        }
        XCTAssertEqual(answer?.status, 503)
    }
}

/// A backend whose only interesting answer is `backup()`.
private final class BackupBackend: AdminBackend {
    var answer: BackupAnswer
    private(set) var calls = 0
    private let fake = FakeAdminBackend()
    init(answer: BackupAnswer) { self.answer = answer }
    func backup() -> BackupAnswer {
        calls += 1
        return answer
    }
    func tempoStatus() -> TempoStatus { fake.tempoStatus() }
    func requestTempoChange(_ request: TempoRequest, reply: @escaping (TempoDecision) -> Void) {
        fake.requestTempoChange(request, reply: reply)
    }
    func recordTempoRefusal(reason: String) {}
    func driftStatus() -> DriftStatus { fake.driftStatus() }
    func leaderStatus() -> LeaderStatus { fake.leaderStatus() }
    func health() -> [String: ComponentHealth] { fake.health() }
    func readiness() -> (ready: Bool, reason: String) { fake.readiness() }
    func recentBeats() -> [BeatRecord] { [] }
    func metricsText() -> String { "" }
}
