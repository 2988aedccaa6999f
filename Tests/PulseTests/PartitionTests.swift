// A real network partition: three nodes, each in its own network namespace,
// joined by veth pairs to a bridge in a hub namespace that also runs the
// nats-server. Cutting one node's link isolates it from the other two and
// from NATS: the minority degrades, the majority keeps a leader and keeps
// publishing, and healing leaves one publisher. Needs root (CI runs as root).
import Foundation
import Glibc
import XCTest

final class PartitionTests: XCTestCase {
    private let tag = String(getpid() % 10000)
    private var hub: String { "bbh\(tag)" }
    private func ns(_ i: Int) -> String { "bb\(i)n\(tag)" }
    private func ip(_ i: Int) -> String { "10.77.0.1\(i)" }

    /// Starts a long-running command (not through `bash &`: Foundation's
    /// Process would wait for the grandchild, which inherits its pipe).
    private func launch(_ arguments: [String], log: String) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        process.arguments = arguments
        FileManager.default.createFile(atPath: log, contents: nil)
        let handle = FileHandle(forWritingAtPath: log)!
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return process
    }

    private func get(_ i: Int, _ path: String) -> [String: Any] {
        let result = Harness.sh("ip netns exec \(ns(i)) curl -s -m 2 http://127.0.0.1:8080\(path)", timeout: 5)
        return (try? JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any]) ?? [:]
    }

    func testMinorityDegradesMajorityKeepsALeaderAndHealingLeavesOnePublisher() throws {
        guard getuid() == 0 else { return XCTFail("the partition test needs root to create network namespaces") }
        let dir = Harness.tempDir("partition")
        var children: [Process] = []
        defer {
            for child in children where child.isRunning {
                kill(child.processIdentifier, SIGKILL)
                child.waitUntilExit()
            }
            Harness.sh(
                "pkill -f 'data-dir \(dir)/' ; pkill -f 'watch -raw -cluster part' ; pkill -f 'nats-server -a 10.77.0.1' ; sleep 0.3"
            )
            Harness.sh("for n in \(hub) \(ns(1)) \(ns(2)) \(ns(3)); do ip netns del $n 2>/dev/null; done")
            try? FileManager.default.removeItem(atPath: dir)
        }
        var setup = """
            set -e
            ip netns add \(hub)
            ip -n \(hub) link set lo up
            ip -n \(hub) link add br0 type bridge
            ip -n \(hub) addr add 10.77.0.1/24 dev br0
            ip -n \(hub) link set br0 up
            """
        for i in 1...3 {
            setup += """

                ip netns add \(ns(i))
                ip -n \(ns(i)) link set lo up
                ip link add v\(i)x\(tag) type veth peer name p\(i)x\(tag)
                ip link set v\(i)x\(tag) netns \(ns(i))
                ip link set p\(i)x\(tag) netns \(hub)
                ip -n \(hub) link set p\(i)x\(tag) master br0 up
                ip -n \(ns(i)) addr add \(ip(i))/24 dev v\(i)x\(tag)
                ip -n \(ns(i)) link set v\(i)x\(tag) up
                """
        }
        let made = Harness.sh(setup)
        XCTAssertEqual(made.status, 0, "namespaces: \(made.output)")
        guard made.status == 0 else { return }

        children.append(
            try launch(
                ["netns", "exec", hub, NatsServer.binary, "-a", "10.77.0.1", "-p", "4222"], log: "\(dir)/nats.log"))
        let peers = (1...3).map { "n\($0)@\(ip($0)):7000" }.joined(separator: ",")
        for i in 1...3 {
            children.append(
                try launch(
                    [
                        "netns", "exec", ns(i), Harness.pulsePath, "-bootstrap", "-bpm", "300", "-max-bpm", "600",
                        "-cluster", "part", "-node-id", "n\(i)", "-raft-bind", "\(ip(i)):7000", "-peers", peers,
                        "-raft-insecure",
                        "-nats", "nats://10.77.0.1:4222", "-admin-port", "8080", "-data-dir", "\(dir)/n\(i)",
                    ], log: "\(dir)/n\(i).log"))
        }
        usleep(300_000)
        children.append(
            try launch(
                [
                    "netns", "exec", hub, Harness.pulsePath, "watch", "-raw", "-cluster", "part", "-nats",
                    "nats://10.77.0.1:4222",
                ],
                log: "\(dir)/frames.jsonl"))
        func logs() -> String {
            (1...3).map { "--- n\($0)\n" + ((try? String(contentsOfFile: "\(dir)/n\($0).log", encoding: .utf8)) ?? "") }
                .joined(separator: "\n")
        }
        func frames() -> [[String: Any]] {
            let text = (try? String(contentsOfFile: "\(dir)/frames.jsonl", encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }
        var leader: Int?
        Harness.waitUntil(seconds: 15) {
            leader = (1...3).first { self.get($0, "/leader")["is_leader"] as? Bool == true }
            return leader != nil && frames().count >= 3
        }
        let oldLeader = try XCTUnwrap(leader, logs())
        // Cut a follower off: the minority of one.
        let minority = oldLeader % 3 + 1
        Harness.sh("ip -n \(ns(minority)) link set v\(minority)x\(tag) down")
        let cutAt = frames().count
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { self.get(minority, "/drift")["degradation_mode"] as? Bool == true },
            "the minority degrades\n\(logs())")
        XCTAssertTrue(Harness.waitUntil(seconds: 5) { frames().count >= cutAt + 10 }, "the majority keeps publishing")
        let majorityLeader = (1...3).filter { $0 != minority }.first {
            self.get($0, "/leader")["is_leader"] as? Bool == true
        }
        XCTAssertNotNil(majorityLeader, "the majority keeps a leader\n\(logs())")
        XCTAssertEqual(get(minority, "/leader")["is_leader"] as? Bool, false)
        // Heal.
        Harness.sh("ip -n \(ns(minority)) link set v\(minority)x\(tag) up")
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) { self.get(minority, "/drift")["degradation_mode"] as? Bool == false },
            "the minority leaves degradation\n\(logs())")
        let healedAt = frames().count
        XCTAssertTrue(Harness.waitUntil(seconds: 10) { frames().count >= healedAt + 10 }, logs())
        let all = frames()
        let indices = all.compactMap { ($0["beat_index"] as? NSNumber)?.int64Value }
        let described = all.map {
            "\(($0["beat_index"] as? NSNumber)?.int64Value ?? -1)/\(($0["hlc"] as? String)?.split(separator: ":").last ?? "?")"
                + (($0["degraded"] as? Bool ?? false) ? "/D" : "")
        }.joined(separator: " ")
        for (a, b) in zip(indices, indices.dropFirst()) {
            XCTAssertGreaterThan(b, a, "index \(b) after \(a)\nframes: \(described)\n\(logs())")
        }
        let afterHeal = all[healedAt...]
        XCTAssertFalse(afterHeal.contains { $0["degraded"] as? Bool == true }, "one publisher, not degraded")
        let publishers = Set(
            afterHeal.compactMap { ($0["hlc"] as? String)?.split(separator: ":").last.map(String.init) })
        XCTAssertEqual(publishers.count, 1, "one publisher after healing: \(publishers)")
    }
}
