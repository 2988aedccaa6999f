// Nothing on the loop blocks on NATS (issue 14, requirements §4): the
// nats-server is blackholed (`iptables -j DROP` on its loopback port: SYNs and
// segments vanish, nothing is refused) while a single node publishes at
// 600 bpm. The loop keeps turning (/live answers quickly, polled over the
// whole window), no beat is missed, the beats are counted as unpublished,
// and when NATS returns every frame received is within half a period of its
// instant (nothing queued during the outage arrives late). Needs root.
import Foundation
import Glibc
import XCTest

/// Small helpers shared by the NATS process tests.
enum NatsProcessSupport {
    /// One HTTP/1.0 GET on 127.0.0.1:`port` with a `timeoutMs` receive
    /// timeout: (status line + body, seconds taken), or nil on failure.
    static func get(port: Int, path: String, timeoutMs: Int = 3000) -> (text: String, seconds: Double)? {
        let start = DispatchTime.now().uptimeNanoseconds
        guard let fd = try? Harness.connectLoopback(port: port, timeoutMs: timeoutMs) else { return nil }
        defer { close(fd) }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else { return nil }
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            data.append(contentsOf: buffer[0..<n])
        }
        guard !data.isEmpty else { return nil }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        return (String(decoding: data, as: UTF8.self), seconds)
    }

    /// The value of an unlabelled counter in a Prometheus exposition.
    static func metric(_ name: String, in text: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.split(separator: " ").last ?? "")
        }
        return nil
    }

    /// Beat indices of received frames.
    static func indices(_ frames: [ReceivedFrame]) -> [Int64] {
        frames.compactMap { ($0.object["beat_index"] as? NSNumber)?.int64Value }
    }
}

final class NatsBlackholeTests: XCTestCase {
    func testBlackholedNatsNeverStallsTheLoopAndNoFrameArrivesLate() throws {
        guard getuid() == 0 else { return XCTFail("the blackhole test needs root for iptables") }
        guard Harness.sh("command -v iptables").status == 0 else {
            return XCTFail("iptables is missing (Debian package iptables)")
        }
        // Two routed servers: the node's (blackholed) and the subscriber's
        // (untouched, so the measurement is not blackholed with the node:
        // its ACKs to the server would be dropped too). The node's server
        // does not advertise the other one, so the node cannot fail over
        // and really is cut off from NATS.
        let dir = Harness.tempDir("blackhole")
        let routePorts = [Harness.freePort(), Harness.freePort()]
        let nats = try ClusterNatsServer(
            name: "X", clientPort: Harness.freePort(), routePort: routePorts[0], routes: [routePorts[1]], dir: dir,
            noAdvertise: true)
        let other = try ClusterNatsServer(
            name: "Y", clientPort: Harness.freePort(), routePort: routePorts[1], routes: [routePorts[0]], dir: dir,
            noAdvertise: true)
        let adminPort = Harness.freePort()
        let rule = "INPUT -i lo -p tcp --dport \(nats.clientPort) -j DROP"
        defer {
            // Removed in all cases (every copy, should one have been added twice).
            Harness.sh("while iptables -D \(rule) 2>/dev/null; do :; done")
            try? FileManager.default.removeItem(atPath: dir)
        }
        let subscriber = try Subscriber(url: other.url, subject: "backbeat.hole.beat")
        let node = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "600", "-max-bpm", "600", "-cluster", "hole", "-node-id", "hole-1",
                "-nats", nats.url, "-data-dir", dir + "/data", "-admin-port", "\(adminPort)",
            ], logPath: dir + "/node.log")
        XCTAssertTrue(
            subscriber.wait(for: 10, seconds: 15), "frames flow (across the route) before the blackhole\n" + node.log)
        let epoch = try ContractEpoch.load(adminPort: adminPort)
        func metrics() -> String { NatsProcessSupport.get(port: adminPort, path: "/metrics")?.text ?? "" }
        let before = metrics()
        let unpublishedBefore = NatsProcessSupport.metric("backbeat_beats_unpublished_total", in: before) ?? -1
        let missedBefore = NatsProcessSupport.metric("backbeat_beats_missed_total", in: before) ?? -1

        // Blackhole for 6 s; poll /live all along.
        let blackholedNs = cloop_realtime_ns_for_tests()
        let added = Harness.sh("iptables -A \(rule)")
        XCTAssertEqual(added.status, 0, "iptables: \(added.output)")
        guard added.status == 0 else { return }
        var latencies: [Double] = []
        var failures = 0
        let windowEnd = Date().addingTimeInterval(6)
        while Date() < windowEnd {
            if let answer = NatsProcessSupport.get(port: adminPort, path: "/live"), answer.text.contains(" 200 ") {
                latencies.append(answer.seconds)
            } else {
                failures += 1
            }
            usleep(20_000)
        }
        let during = metrics()
        Harness.sh("while iptables -D \(rule) 2>/dev/null; do :; done")
        let healedNs = cloop_realtime_ns_for_tests()

        let sorted = latencies.sorted()
        let worstMs = (sorted.last ?? 99) * 1000
        let p99Ms = sorted.isEmpty ? 99 : sorted[min(sorted.count - 1, sorted.count * 99 / 100)] * 1000
        print("blackhole: /live polls \(latencies.count), p99 \(p99Ms) ms, max \(worstMs) ms, failures \(failures)")
        XCTAssertEqual(failures, 0, "/live answered every poll")
        XCTAssertGreaterThan(latencies.count, 100, "/live was polled all along")
        // A loop stuck on the client's mutex answers after up to 2 s (the
        // connect timeout); a turning loop within milliseconds. The issue's
        // bound is 10 ms: p99 must meet it; the single worst poll may also
        // carry the test machine's own scheduling (shared 2-core VMs stall a
        // vCPU for several ms now and then), so it gets 50 ms, still 40×
        // below the stall this test exists to catch.
        XCTAssertLessThan(p99Ms, 10, "/live p99 latency over the blackhole (max \(worstMs) ms)\n" + node.log)
        XCTAssertLessThan(worstMs, 50, "/live max latency over the blackhole (p99 \(p99Ms) ms)\n" + node.log)
        let unpublished =
            (NatsProcessSupport.metric("backbeat_beats_unpublished_total", in: during) ?? -1)
            - unpublishedBefore
        let missed = (NatsProcessSupport.metric("backbeat_beats_missed_total", in: during) ?? -1) - missedBefore
        XCTAssertGreaterThanOrEqual(unpublished, 30, "beats counted as unpublished while NATS was unreachable")
        XCTAssertEqual(missed, 0, "no beat missed: the loop never stopped")

        // NATS returns: frames resume, and none arrives late.
        let count = subscriber.count
        XCTAssertTrue(subscriber.wait(for: count + 20, seconds: 10), "frames resume after the blackhole\n" + node.log)
        XCTAssertEqual(node.stop(), 0)
        let halfPeriodNs = 60_000_000_000 / epoch.bpm / 2
        let afterHeal = subscriber.received.filter { $0.receivedNs >= healedNs }
        XCTAssertGreaterThanOrEqual(afterHeal.count, 20)
        for frame in afterHeal {
            guard let index = (frame.object["beat_index"] as? NSNumber)?.int64Value else {
                XCTFail("frame without an index: \(frame.text)")
                continue
            }
            let lateNs = frame.receivedNs - epoch.instantNs(index)
            XCTAssertLessThan(lateNs, halfPeriodNs, "beat \(index) arrived \(lateNs / 1_000_000) ms after its instant")
        }
        if afterHeal.contains(where: { f in
            (f.object["beat_index"] as? NSNumber).map { f.receivedNs - epoch.instantNs($0.int64Value) >= halfPeriodNs }
                ?? true
        }) {
            let trace = subscriber.received.filter { $0.receivedNs >= blackholedNs - 500_000_000 }.map { f in
                let k = (f.object["beat_index"] as? NSNumber)?.int64Value ?? -1
                return "#\(k) instant+\((epoch.instantNs(k) - blackholedNs) / 1_000_000)ms "
                    + "received+\((f.receivedNs - blackholedNs) / 1_000_000)ms"
            }
            print(
                "times from the blackhole (healed +\((healedNs - blackholedNs) / 1_000_000) ms):\n"
                    + trace.joined(separator: "\n") + "\n" + node.log)
        }
        let indices = NatsProcessSupport.indices(subscriber.received)
        XCTAssertEqual(indices, indices.sorted(), "indices never go backwards")
        XCTAssertEqual(Set(indices).count, indices.count, "no index repeats")
        XCTAssertTrue(node.log.contains("NATS reconnected"), node.log)
    }
}

/// Wall-clock now in Unix ns (the subscriber stamps frames with the same clock).
func cloop_realtime_ns_for_tests() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}
