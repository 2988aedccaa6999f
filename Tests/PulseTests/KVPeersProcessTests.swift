// The pulses' reports of the pulses they saw (issue 21, the degraded turns'
// ranking: PulsePolicy/KVLeasePeers.swift), on real `pulse` processes in
// nats-kv mode and a real JetStream nats-server: each pulse publishes its
// report on `_BACKBEAT.<cluster>.peers` with its pings, a report received
// is merged (a pulse only reported becomes one seen, in `/members`), a
// malformed one is refused and counted, and so is a ping from an id the
// `-node-id` rule refuses (not answered).
import CNats
import Foundation
import Glibc
import PulsePolicy
import XCTest

@testable import Pulse

final class KVPeersProcessTests: XCTestCase {
    func testPulsesReportThePulsesTheySawAndMergeTheReportsTheyHear() throws {
        let nats = try NatsServer(jetStream: true)
        let cluster = try KVPulseCluster(cluster: "kvpeers", bpm: 600, natsURL: nats.url)
        cluster.server = nats
        let reports = try Subscriber(url: nats.url, subject: "_BACKBEAT.kvpeers.peers")

        // Each pulse reports the two others (ages within the window).
        XCTAssertTrue(
            Harness.waitUntil(seconds: 15) {
                let latest = Dictionary(
                    reports.received.compactMap { try? KVLeasePeers.decodeReport($0.text).get() }.map {
                        ($0.from, Set($0.entries.map(\.id)))
                    }, uniquingKeysWith: { $1 })
                return latest["k1"] == ["k2", "k3"] && latest["k2"] == ["k1", "k3"] && latest["k3"] == ["k1", "k2"]
            }, "reports: \(reports.received.suffix(6).map(\.text))\n\(cluster.logs)")

        // A report of a pulse none of them pinged with: merged, so listed.
        var nc: OpaquePointer?
        XCTAssertEqual(natsConnection_ConnectTo(&nc, nats.url), NATS_OK)
        defer { natsConnection_Destroy(nc) }
        func membersOfK1() -> [String] {
            ((cluster.get(0, "/members")["members"] as? [[String: Any]]) ?? []).compactMap { $0["name"] as? String }
        }
        XCTAssertEqual(membersOfK1(), ["k1", "k2", "k3"])
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) {
                natsConnection_PublishString(nc, "_BACKBEAT.kvpeers.peers", "k0 200:k00")
                natsConnection_Flush(nc)
                return membersOfK1() == ["k0", "k00", "k1", "k2", "k3"]
            }, "members: \(membersOfK1())\n\(cluster.logs)")

        // A malformed report is refused and counted, and changes nothing.
        XCTAssertEqual(natsConnection_PublishString(nc, "_BACKBEAT.kvpeers.peers", "k9 soon:k1"), NATS_OK)
        natsConnection_Flush(nc)
        var refused = 0.0
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) {
                let text =
                    (try? RawClient(port: cluster.adminPorts[0]).request(httpRequest("GET", "/metrics"))?.text) ?? ""
                refused =
                    LiveViewProcessTests.metric(
                        text, "backbeat_rejected_input_total", [#"reason="bad_peer_report""#]) ?? 0
                return refused >= 1
            }, "bad_peer_report counted\n\(cluster.logs)")
        XCTAssertFalse(membersOfK1().contains("k9"))

        // A ping from an id the -node-id flag refuses is not answered, and
        // counted `bad_peer_id`; the same ping from a good id is answered.
        func ping(_ from: String) -> natsStatus {
            var reply: OpaquePointer?
            let status = natsConnection_RequestString(&reply, nc, "_BACKBEAT.kvpeers.clock", "1 \(from)", 700)
            natsMsg_Destroy(reply)
            return status
        }
        XCTAssertEqual(ping("k.7"), NATS_TIMEOUT, "no pulse answers a ping from k.7")
        XCTAssertEqual(ping("k7"), NATS_OK, "a good id is answered")
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) {
                let text =
                    (try? RawClient(port: cluster.adminPorts[0]).request(httpRequest("GET", "/metrics"))?.text) ?? ""
                return
                    (LiveViewProcessTests.metric(
                        text, "backbeat_rejected_input_total", [#"reason="bad_peer_id""#]) ?? 0) >= 1
            }, "bad_peer_id counted\n\(cluster.logs)")
        XCTAssertFalse(membersOfK1().contains("k.7"))
    }
}
