// The nats-kv deploy variant's permissions (issue 21), with real processes:
// a real `nats-server -js` runs the shipped deploy/nats/backbeat-kv.conf and
// two pulses in `-election nats-kv` mode connect with the pulse nkey. The
// grants hold (the buckets are made, the lease is taken, frames flow, the
// clock pings reach the other pulse, a tempo request posted to the
// non-holder is forwarded through the lease bucket and applied) with no
// permissions violation for the pulse role; the denials hold (a consumer
// can neither write a KV key nor touch a bucket's stream, nor listen to the
// pulses' pings).
import Foundation
import PulseCore
import XCTest

final class KVPermissionsProcessTests: XCTestCase {
    func testShippedKVPermissionsGrantThePulseItsBucketsAndConsumersNothing() throws {
        let dir = Harness.tempDir("kvperm")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let nats = try NatsAuthTests.SecuredNats(
            dir: dir, conf: "deploy/nats/backbeat-kv.conf", arguments: ["-js", "-sd", "\(dir)/js"])
        let seedPath = "\(dir)/pulse.nk"
        try Data("\(nats.pulse.seed)\n".utf8).write(to: URL(fileURLWithPath: seedPath))
        let token = "admin-token-\(UInt64.random(in: 1...UInt64.max))"
        // The cluster id deploy/nats/backbeat-kv.conf spells out.
        let subjects = BackbeatSubjects(clusterId: "chorus-aus-01")
        let ports = [Harness.freePort(), Harness.freePort()]
        let pulses = try ["k1", "k2"].enumerated().map { i, name in
            try PulseProcess(
                arguments: [
                    "-election", "nats-kv", "-bpm", "300", "-max-bpm", "600", "-cluster", subjects.clusterId,
                    "-node-id", name, "-nats", nats.url, "-nats-nkey", seedPath, "-data-dir", "\(dir)/\(name)",
                    "-admin-port", "\(ports[i])", "-admin-token", token,
                ], logPath: "\(dir)/\(name).log")
        }
        defer { for p in pulses { p.stop() } }
        var logs: String {
            let server = (try? String(contentsOfFile: nats.logPath, encoding: .utf8)) ?? ""
            let violations = server.split(separator: "\n").filter { $0.contains("Violation") }.suffix(10)
            return (pulses.map(\.log) + violations.map(String.init)).joined(separator: "\n---\n")
        }
        let watcher = try Subscriber(url: nats.consumerURL, subject: "backbeat.\(subjects.clusterId).>")
        XCTAssertTrue(
            Harness.waitUntil(seconds: 20) { watcher.received.filter { $0.subject == subjects.beat }.count >= 5 },
            "the lease holder publishes frames under the pulse role\n\(logs)")

        // The pings pass: each node lists both pulses.
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                ports.allSatisfy { port in
                    let members = NatsProcessSupport.get(port: port, path: "/members")?.text ?? ""
                    return members.contains(#""name":"k1""#) && members.contains(#""name":"k2""#)
                }
            }, "the clock pings reach the other pulse\n\(logs)")

        // Forwarding through the lease bucket and the timeline write: a tempo
        // change posted to the node that does not hold the lease.
        let holder = pulses.firstIndex { $0.log.contains("publishing as lease holder") } ?? 0
        let client = try RawClient(port: ports[1 - holder])
        let response = try XCTUnwrap(
            client.request(
                httpRequest(
                    "POST", "/tempo", body: #"{"tempo_bpm": 320, "justification": "perm"}"#,
                    headers: ["Authorization: Bearer \(token)"])))
        XCTAssertEqual(response.status, 202, response.text + logs)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 15) {
                watcher.received.contains { $0.subject == subjects.beat && $0.object["tempo_bpm"] as? Int == 320 }
            }, "frames at the new tempo\n\(logs)")

        // Denials of the consumer role: a key write, a stream operation, the pings.
        let consumer = try RawNats(url: nats.consumerURL)
        let marker = "forged-\(UInt64.random(in: 1...UInt64.max))"
        let forbidden = [
            "$KV.backbeat_chorus-aus-01_lease.leader", "$KV.backbeat_chorus-aus-01.timeline",
            "$JS.API.STREAM.DELETE.KV_backbeat_chorus-aus-01", "_BACKBEAT.chorus-aus-01.clock",
        ]
        for subject in forbidden { XCTAssertTrue(consumer.publish(subject, Array(marker.utf8))) }
        consumer.flush()
        let pingSpy = try Subscriber(url: nats.consumerURL, subject: "_BACKBEAT.chorus-aus-01.clock")
        usleep(500_000)  // several ping rounds
        XCTAssertEqual(pingSpy.count, 0, "a consumer heard the pulses' pings")
        let framesBefore = watcher.received.filter { $0.subject == subjects.beat }.count
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                watcher.received.filter { $0.subject == subjects.beat }.count >= framesBefore + 5
            }, "frames keep arriving\n\(logs)")

        let serverLog = (try? String(contentsOfFile: nats.logPath, encoding: .utf8)) ?? ""
        for subject in forbidden {
            XCTAssertTrue(
                serverLog.contains(#"Publish Violation - User "consumer", Subject "\#(subject)""#),
                "no violation for \(subject)\n\(serverLog)")
        }
        XCTAssertTrue(
            serverLog.contains(#"Subscription Violation - User "consumer", Subject "_BACKBEAT.chorus-aus-01.clock""#),
            serverLog)
        let violations = serverLog.split(separator: "\n").filter { $0.contains("Violation") }
        XCTAssertTrue(
            violations.allSatisfy { $0.contains(#"User "consumer""#) }, "the pulse role hit a denial\n\(serverLog)")
        XCTAssertFalse(logs.contains("Permissions Violation"), logs)
        XCTAssertFalse(watcher.received.contains { $0.text.contains(marker) }, "a forgery was delivered")
    }
}
