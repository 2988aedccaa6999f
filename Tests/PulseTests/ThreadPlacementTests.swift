// Helper threads off the beat core (issue 14): a node pinned to one core at
// SCHED_FIFO keeps only its loop thread there. Every other thread (NATS
// library threads, connect threads, subscription delivery threads) runs
// unpinned at normal priority, also after a NATS reconnect (which creates
// new threads from the pinned loop). Read from /proc: the policy and
// rt_priority fields of each task's stat, Cpus_allowed_list of its status.
// Needs root (SCHED_FIFO) and at least two CPUs.
import CLoop
import Foundation
import Glibc
import XCTest

@testable import Pulse

final class ThreadPlacementTests: XCTestCase {
    struct TaskPlacement {
        var tid: Int
        var name: String
        var policy: Int  // 0 SCHED_OTHER, 1 SCHED_FIFO
        var rtPriority: Int
        var cpus: String
    }

    /// Every thread of `pid`, from /proc.
    static func tasks(of pid: Int32) -> [TaskPlacement] {
        let dir = "/proc/\(pid)/task"
        let tids = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).compactMap { Int($0) }
        return tids.sorted().compactMap { tid in
            guard let stat = try? String(contentsOfFile: "\(dir)/\(tid)/stat", encoding: .utf8),
                let status = try? String(contentsOfFile: "\(dir)/\(tid)/status", encoding: .utf8),
                let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")")
            else { return nil }
            let name = String(stat[stat.index(after: open)..<close])
            // Fields after "(comm)": state is field 3, so field n is at n - 3.
            let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
            guard fields.count > 38, let rt = Int(fields[40 - 3]), let policy = Int(fields[41 - 3]) else { return nil }
            let cpus =
                status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }
                .map { $0.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces) } ?? "?"
            return TaskPlacement(tid: tid, name: name, policy: policy, rtPriority: rt, cpus: cpus)
        }
    }

    private func assertOnlyTheLoopThreadIsPinned(
        pid: Int32, cpu: Int, priority: Int, startupCpus: String, log: String, file: StaticString = #filePath,
        line: UInt = #line
    ) {
        let tasks = Self.tasks(of: pid)
        let described = tasks.map { "\($0.tid) \($0.name) policy=\($0.policy) rt=\($0.rtPriority) cpus=\($0.cpus)" }
            .joined(separator: "\n")
        XCTAssertGreaterThan(tasks.count, 2, "the node has helper threads\n\(described)", file: file, line: line)
        for task in tasks {
            if task.tid == Int(pid) {
                // The main thread runs the loop.
                XCTAssertEqual(task.policy, 1, "loop thread is SCHED_FIFO\n\(described)", file: file, line: line)
                XCTAssertEqual(task.rtPriority, priority, "loop thread priority\n\(described)", file: file, line: line)
                XCTAssertEqual(task.cpus, "\(cpu)", "loop thread pinned\n\(described)", file: file, line: line)
            } else {
                XCTAssertEqual(
                    task.policy, 0, "thread \(task.tid) (\(task.name)) is SCHED_OTHER\n\(described)\n\(log)",
                    file: file, line: line)
                XCTAssertEqual(task.rtPriority, 0, "thread \(task.tid) (\(task.name)) priority", file: file, line: line)
                XCTAssertEqual(
                    task.cpus, startupCpus, "thread \(task.tid) (\(task.name)) is not pinned\n\(described)",
                    file: file, line: line)
            }
        }
    }

    func testOnlyTheLoopThreadRunsPinnedAtRealtimePriority() throws {
        guard getuid() == 0 else { return XCTFail("the thread-placement test needs root for SCHED_FIFO") }
        let cpuCount = ProcessInfo.processInfo.activeProcessorCount
        guard cpuCount >= 2 else { return XCTFail("needs at least two CPUs to tell pinned from unpinned") }
        let startupCpus = Self.tasks(of: getpid()).first { $0.tid == Int(getpid()) }?.cpus ?? "?"
        let nats = try NatsServer()
        let dir = Harness.tempDir("placement")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.place.beat")
        let cpu = cpuCount - 1
        let node = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", "place", "-node-id", "place-1",
                "-nats", nats.url, "-data-dir", dir + "/data", "-admin-port", "0", "-cpu", "\(cpu)",
                "-rt-priority", "10",
            ], logPath: dir + "/node.log")
        XCTAssertTrue(subscriber.wait(for: 10, seconds: 10), "frames flow\n" + node.log)
        let pid = node.process.processIdentifier
        assertOnlyTheLoopThreadIsPinned(pid: pid, cpu: cpu, priority: 10, startupCpus: startupCpus, log: node.log)

        // A reconnect creates threads again (from the pinned loop thread).
        nats.stop()
        usleep(500_000)
        try nats.start()
        let count = subscriber.count
        XCTAssertTrue(subscriber.wait(for: count + 10, seconds: 10), "frames resume\n" + node.log)
        assertOnlyTheLoopThreadIsPinned(pid: pid, cpu: cpu, priority: 10, startupCpus: startupCpus, log: node.log)
        XCTAssertEqual(node.stop(), 0)
    }

    /// The in-process helper: work run unpinned creates unpinned threads,
    /// and the caller's own placement is restored afterwards.
    func testRunUnpinnedCreatesHelperThreadsOffThePinnedCore() throws {
        let cpuCount = ProcessInfo.processInfo.activeProcessorCount
        guard cpuCount >= 2 else { return XCTFail("needs at least two CPUs") }
        let result = ThreadPlacementProbe.run(pinTo: Int32(cpuCount - 1))
        XCTAssertEqual(result.callerCpusDuring, 1, "the caller was pinned")
        XCTAssertEqual(result.childCpus, Int(ThreadPlacement.startupCPUCount), "a thread made in runUnpinned is not")
        XCTAssertEqual(result.callerCpusAfter, 1, "the caller's pin is restored")
        XCTAssertEqual(result.placedChildCpus, Int(ThreadPlacement.startupCPUCount), "placeCurrentHelperThread unpins")
    }
}

/// Runs the probe on a scratch thread so the test runner's own thread is
/// never pinned.
enum ThreadPlacementProbe {
    final class Result: @unchecked Sendable {
        var callerCpusDuring = 0
        var childCpus = 0
        var callerCpusAfter = 0
        var placedChildCpus = 0
    }

    static func cpus() -> Int {
        var placement = cloop_placement_t()
        _ = cloop_placement_save(&placement)
        return Int(placement.cpu_count)
    }

    static func runThread(_ body: @escaping @Sendable () -> Void) {
        let thread = Thread(block: body)
        thread.start()
        while !thread.isFinished { usleep(1000) }
    }

    static func run(pinTo cpu: Int32) -> Result {
        let result = Result()
        runThread {
            _ = cloop_pin_to_cpu(cpu)
            result.callerCpusDuring = cpus()
            // A thread created while unpinned inherits the unpinned mask.
            ThreadPlacement.runUnpinned { runThread { result.childCpus = cpus() } }
            result.callerCpusAfter = cpus()
            // A thread created pinned moves itself off.
            runThread {
                ThreadPlacement.placeCurrentHelperThread()
                result.placedChildCpus = cpus()
            }
        }
        return result
    }
}
