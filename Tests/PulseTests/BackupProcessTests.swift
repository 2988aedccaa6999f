// Backup and restore end to end, against the real binary and a real
// nats-server: `pulse backup` from a running cluster (401 without the admin
// token, a follower sends it on to the leader), the old cluster stopped,
// `pulse restore` into new data dirs, new nodes on new ports started WITHOUT
// -bootstrap, and their frames checked against the old timeline's math:
// the same instants, indices after the old cluster's last, the same tempo
// (and the committed change), a term above the old one. Then the same for a
// single node, with a change still ahead when the backup is taken.
import Foundation
import Glibc
import PulseCore
import XCTest

@testable import Pulse

final class BackupProcessTests: XCTestCase {
    static let token = "backup-secret"

    private func get(_ port: Int, _ path: String, token: String? = nil) -> RawResponse? {
        let headers = token.map { ["Authorization: Bearer \($0)"] } ?? []
        return (try? RawClient(port: port, timeoutMs: 3000))?.request(httpRequest("GET", path, headers: headers))
    }

    private func postTempo(_ port: Int, bpm: Int, justification: String) -> RawResponse? {
        (try? RawClient(port: port, timeoutMs: 5000))?.request(
            httpRequest(
                "POST", "/tempo", body: #"{"tempo_bpm":\#(bpm),"justification":"\#(justification)"}"#,
                headers: ["Authorization: Bearer \(Self.token)"]))
    }

    private struct Frame {
        var index: Int64
        var term: Int64
        var bpm: Int64
        var from: String
    }

    private func decoded(_ frames: [ReceivedFrame]) -> [Frame] {
        frames.compactMap {
            guard case .success(let f) = BeatFrameDecoder.result([UInt8]($0.raw)) else { return nil }
            return Frame(index: f.beatIndex, term: Int64(f.term), bpm: f.tempoBpm, from: f.hlcSuffix)
        }
    }

    /// The old timeline's epoch from its `GET /timeline` body.
    private func epoch(_ timeline: [String: Any], cluster: String, bar: Int) throws -> ContractEpoch {
        let e = try XCTUnwrap(timeline["epoch"] as? [String: Any])
        return ContractEpoch(
            clusterId: cluster, startBeat: try XCTUnwrap((e["start_beat"] as? NSNumber)?.int64Value),
            startNs: try XCTUnwrap((e["start_ns"] as? NSNumber)?.int64Value),
            bpm: try XCTUnwrap((e["bpm"] as? NSNumber)?.int64Value), bar: bar)
    }

    func testClusterBackupRestoresIntoANewClusterOnTheSameTimeline() throws {
        let nats = try NatsServer()
        let dir = Harness.tempDir("backup-cluster")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cluster = "bkc"
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.\(cluster).beat")
        func startCluster(_ names: [String], bootstrap: Bool) -> ([PulseProcess], [Int], String) {
            let raft = names.map { _ in Harness.freePort() }
            let admin = names.map { _ in Harness.freePort() }
            let peers = names.indices.map { "\(names[$0])@127.0.0.1:\(raft[$0])" }.joined(separator: ",")
            let nodes = names.indices.compactMap { i in
                try? PulseProcess(
                    arguments: (bootstrap ? ["-bootstrap"] : []) + [
                        "-bpm", "300", "-max-bpm", "600", "-bar", "4", "-cluster", cluster, "-node-id", names[i],
                        "-raft-bind", "127.0.0.1:\(raft[i])", "-peers", peers, "-nats", nats.url,
                        "-data-dir", "\(dir)/\(names[i])", "-admin-port", "\(admin[i])", "-admin-token", Self.token,
                    ], logPath: "\(dir)/\(names[i]).log")
            }
            return (nodes, admin, peers)
        }
        let (old, oldAdmin, _) = startCluster(["n1", "n2", "n3"], bootstrap: true)
        XCTAssertEqual(old.count, 3)
        var logs: String {
            (try? FileManager.default.contentsOfDirectory(atPath: dir))?.filter { $0.hasSuffix(".log") }
                .sorted().map { "--- \($0)\n" + ((try? String(contentsOfFile: "\(dir)/\($0)", encoding: .utf8)) ?? "") }
                .joined(separator: "\n") ?? ""
        }
        defer { for node in old { node.stop(timeout: 5) } }
        var leader: Int?
        Harness.waitUntil(seconds: 15) {
            leader = (0..<3).first { self.get(oldAdmin[$0], "/leader")?.json["is_leader"] as? Bool == true }
            return leader != nil
        }
        let lead = try XCTUnwrap(leader, logs)
        XCTAssertTrue(subscriber.wait(for: 3, seconds: 10), logs)

        // A committed tempo change, in effect before the backup: it must survive.
        let change = try XCTUnwrap(postTempo(oldAdmin[lead], bpm: 330, justification: "restore me"), logs)
        XCTAssertEqual(change.status, 202, change.text)
        let atBeat = try XCTUnwrap((change.json["apply_at_beat"] as? NSNumber)?.int64Value)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { self.decoded(subscriber.received).contains { $0.index > atBeat } }, logs)
        let oldTimeline = try XCTUnwrap(get(oldAdmin[lead], "/timeline")).json
        let expected = try epoch(oldTimeline, cluster: cluster, bar: 4)
        XCTAssertEqual([expected.startBeat, expected.bpm], [atBeat, 330], "\(oldTimeline)")

        // Without the token: 401, and the command writes nothing.
        let urls = (0..<3).map { "http://127.0.0.1:\(oldAdmin[($0 + lead + 1) % 3])" }  // followers first
        XCTAssertEqual(get(oldAdmin[lead], "/backup")?.status, 401)
        let file = dir + "/cluster.backup.json"
        let refused = try runPulse(["backup", "--admin", urls.joined(separator: ","), "--out", file])
        XCTAssertEqual(refused.status, 1, refused.stderr)
        XCTAssertTrue(refused.stderr.contains("unauthorized"), refused.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: file))
        XCTAssertEqual(
            get(oldAdmin[(lead + 1) % 3], "/backup", token: Self.token)?.json["code"] as? String, "not_leader")

        let taken = try runPulse([
            "backup", "--admin", urls.joined(separator: ","), "--out", file, "--token", Self.token,
        ])
        XCTAssertEqual(taken.status, 0, taken.stderr + logs)
        let backup = try BackupFile.parse([UInt8](try Data(contentsOf: URL(fileURLWithPath: file))))
        XCTAssertEqual(backup.clusterId, cluster)
        XCTAssertEqual(backup.nodeId, "n\(lead + 1)")
        XCTAssertEqual(backup.bar, 4)
        XCTAssertEqual(backup.pending?.bpm, 330)
        XCTAssertEqual(backup.pending?.atBeat, atBeat)
        XCTAssertEqual(backup.pending?.justification, "restore me")
        XCTAssertGreaterThan(backup.index, 1)

        // The old cluster stops; its last frame and term are the bar to clear.
        for node in old { node.signal(SIGTERM) }
        for node in old { node.stop(timeout: 10) }
        let oldFrames = decoded(subscriber.received)
        let oldLast = try XCTUnwrap(oldFrames.map(\.index).max())
        let oldTerm = try XCTUnwrap(oldFrames.map(\.term).max())
        let before = subscriber.count

        // Three new data dirs, new ids and ports; restore refuses to run twice.
        let names = ["m1", "m2", "m3"]
        let raft = names.map { _ in Harness.freePort() }
        let admin = names.map { _ in Harness.freePort() }
        let peers = names.indices.map { "\(names[$0])@127.0.0.1:\(raft[$0])" }.joined(separator: ",")
        for (i, name) in names.enumerated() {
            let restored = try runPulse([
                "restore", "--from", file, "--data-dir", "\(dir)/\(name)", "--node-id", name, "--peers", peers,
            ])
            XCTAssertEqual(restored.status, 0, restored.stderr)
            XCTAssertTrue(restored.stdout.contains("start the node with: -cluster \(cluster) -bar 4"), restored.stdout)
            if i == 0 {
                let again = try runPulse(["restore", "--from", file, "--data-dir", "\(dir)/\(name)", "--peers", peers])
                XCTAssertEqual(again.status, 2)
                XCTAssertTrue(again.stderr.contains("is not empty"), again.stderr)
                XCTAssertEqual(again.stderr.split(separator: "\n").count, 1, again.stderr)
            }
        }
        let fresh = try names.indices.map { i in
            try PulseProcess(
                arguments: [
                    "-bpm", "300", "-max-bpm", "600", "-bar", "4", "-cluster", cluster, "-node-id", names[i],
                    "-raft-bind", "127.0.0.1:\(raft[i])", "-peers", peers, "-nats", nats.url,
                    "-data-dir", "\(dir)/\(names[i])", "-admin-port", "\(admin[i])", "-admin-token", Self.token,
                ], logPath: "\(dir)/\(names[i]).log")
        }
        defer { for node in fresh { node.stop(timeout: 5) } }
        XCTAssertTrue(subscriber.wait(for: before + 6, seconds: 20), logs)
        let newRaw = Array(subscriber.received.dropFirst(before))
        let newFrames = decoded(newRaw)
        let first = try XCTUnwrap(newFrames.first)
        XCTAssertGreaterThan(first.index, oldLast, "continues after the old cluster's last index, no repeat")
        // Consumers fence on term, refusing only lower ones: the new terms start
        // two above the backup's, at or above the old cluster's last (its
        // leader handed over once as it stopped).
        XCTAssertGreaterThanOrEqual(UInt64(first.term), backup.term + 2)
        XCTAssertGreaterThanOrEqual(first.term, oldTerm, "not below the old cluster's last term")
        XCTAssertTrue(newFrames.allSatisfy { $0.bpm == 330 }, "\(newFrames)")
        // The old timeline's math, checked independently (FrameChecker): instants
        // (deadline_at), downbeats, phases, window ids, tempo, consecutive indices.
        let publisher = try XCTUnwrap(names.first { $0.hasSuffix(first.from) })
        let samePublisher = newRaw.prefix { frame in
            guard case .success(let f) = BeatFrameDecoder.result([UInt8](frame.raw)) else { return false }
            return f.hlcSuffix == first.from
        }
        XCTAssertGreaterThanOrEqual(samePublisher.count, 4, logs)
        let failures = FrameChecker(epoch: expected, phases: ["plan", "work", "review"], nodeId: publisher)
            .check(Array(samePublisher), expectTerm: first.term)
        XCTAssertEqual(failures, [], logs)
        // The new cluster serves the same committed timeline.
        let newLeader = try XCTUnwrap(names.firstIndex(of: publisher))
        let newTimeline = try XCTUnwrap(get(admin[newLeader], "/timeline")).json
        let newEpoch = try epoch(newTimeline, cluster: cluster, bar: 4)
        XCTAssertEqual(newEpoch.instantNs(first.index), expected.instantNs(first.index), "\(newTimeline)")
        XCTAssertEqual(newEpoch.bpm, 330)
    }

    func testSingleNodeBackupCarriesAPendingChange() throws {
        let nats = try NatsServer()
        let dir = Harness.tempDir("backup-single")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let cluster = "bks"
        let bar = 32  // 6.4 s at 300 bpm: a change scheduled just after a downbeat is still ahead after the restore
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.\(cluster).beat")
        let oldAdmin = Harness.freePort()
        let old = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "300", "-max-bpm", "600", "-bar", "\(bar)", "-cluster", cluster, "-node-id",
                "s1", "-nats", nats.url, "-data-dir", dir + "/s1", "-admin-port", "\(oldAdmin)", "-admin-token",
                Self.token,
            ], logPath: dir + "/s1.log")
        defer { old.stop(timeout: 5) }
        // Right after a downbeat, so the change lands a whole bar ahead.
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                self.decoded(subscriber.received).last.map { $0.index % Int64(bar) == 0 } ?? false
            }, old.log)
        let oldTimeline = try XCTUnwrap(get(oldAdmin, "/timeline")).json
        let base = try epoch(oldTimeline, cluster: cluster, bar: bar)
        let change = try XCTUnwrap(postTempo(oldAdmin, bpm: 320, justification: "ahead"), old.log)
        XCTAssertEqual(change.status, 202, change.text)
        let atBeat = try XCTUnwrap((change.json["apply_at_beat"] as? NSNumber)?.int64Value)

        XCTAssertEqual(get(oldAdmin, "/backup")?.status, 401)
        let file = dir + "/single.backup.json"
        let taken = try runPulse([
            "backup", "--admin", "http://127.0.0.1:\(oldAdmin)", "--out", file, "--token", Self.token,
        ])
        XCTAssertEqual(taken.status, 0, taken.stderr)
        let backup = try BackupFile.parse([UInt8](try Data(contentsOf: URL(fileURLWithPath: file))))
        XCTAssertEqual(backup.pending, .init(atBeat: atBeat, bpm: 320, justification: "ahead"))
        // The one-voter log: its no-op, the epoch and the change.
        XCTAssertEqual([backup.term, backup.index], [1, 3])
        XCTAssertEqual(old.stop(), 0)
        let oldLast = try XCTUnwrap(decoded(subscriber.received).map(\.index).max())
        XCTAssertLessThan(oldLast, atBeat, "the change was still ahead when the old node stopped")
        let before = subscriber.count

        let restored = try runPulse(["restore", "--from", file, "--data-dir", dir + "/s2", "--node-id", "s2"])
        XCTAssertEqual(restored.status, 0, restored.stderr)
        let newAdmin = Harness.freePort()
        let fresh = try PulseProcess(
            arguments: [
                "-bpm", "300", "-max-bpm", "600", "-bar", "\(bar)", "-cluster", cluster, "-nats", nats.url,
                "-data-dir", dir + "/s2", "-admin-port", "\(newAdmin)", "-admin-token", Self.token,
            ], logPath: dir + "/s2.log")
        defer { fresh.stop(timeout: 5) }
        // Until two beats after the change.
        XCTAssertTrue(
            Harness.waitUntil(seconds: 15) {
                self.decoded(Array(subscriber.received.dropFirst(before))).contains { $0.index >= atBeat + 2 }
            }, fresh.log)
        let newRaw = Array(subscriber.received.dropFirst(before))
        let newFrames = decoded(newRaw)
        let first = try XCTUnwrap(newFrames.first)
        XCTAssertGreaterThan(first.index, oldLast, "continues after the old node's last index, no repeat")
        // Before the change: the old epoch; from its downbeat on, the new tempo at the old math's instant.
        let changed = ContractEpoch(
            clusterId: cluster, startBeat: atBeat, startNs: base.instantNs(atBeat), bpm: 320, bar: bar)
        let ahead = newRaw.filter { index($0) < atBeat }
        let after = newRaw.filter { index($0) >= atBeat }
        // Restored one-voter log: frames from the backup's term + 2 on (`pulse restore --min-term`).
        let term = Int64(backup.defaultMinTerm)
        XCTAssertEqual(
            FrameChecker(epoch: base, phases: ["plan", "work", "review"], nodeId: "s2").check(ahead, expectTerm: term),
            [], fresh.log)
        XCTAssertEqual(
            FrameChecker(epoch: changed, phases: ["plan", "work", "review"], nodeId: "s2").check(
                after, expectTerm: term), [], fresh.log)
        XCTAssertEqual(Array(newFrames.map(\.index)), Array(first.index..<(first.index + Int64(newFrames.count))))
        XCTAssertTrue(fresh.log.contains("tempo change applied at_beat=\(atBeat) bpm=320"), fresh.log)
    }

    private func index(_ frame: ReceivedFrame) -> Int64 {
        guard case .success(let f) = BeatFrameDecoder.result([UInt8](frame.raw)) else { return -1 }
        return f.beatIndex
    }
}
