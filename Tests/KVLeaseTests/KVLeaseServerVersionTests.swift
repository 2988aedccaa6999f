// Which nats-server versions a replicated lease may run on (issue 21,
// review finding 2; KVLeaseServerVersion.swift).
import PulsePolicy
import XCTest

final class KVLeaseServerVersionTests: XCTestCase {
    func testVersionsParseAndOrder() throws {
        XCTAssertEqual(NatsServerVersion("2.9.10")?.description, "2.9.10")
        XCTAssertEqual(NatsServerVersion("v2.11.0")?.description, "2.11.0")
        XCTAssertEqual(NatsServerVersion("2.11.0-RC.2")?.description, "2.11.0-pre")
        XCTAssertEqual(NatsServerVersion("2.11.0+build.7")?.description, "2.11.0")
        // A pre-release of 2.11.0 may lack its fixes: below the floor (it counted as 2.11.0).
        for pre in ["2.11.0-RC.2", "2.11.0-dev", "v2.11.0-beta.1+b"] {
            XCTAssertLessThan(try XCTUnwrap(NatsServerVersion(pre)), NatsServerVersion.linearizableCAS, pre)
            XCTAssertNotNil(NatsServerVersion.refusal(version: pre, server: "n1", replicas: 3), pre)
        }
        XCTAssertNil(NatsServerVersion.refusal(version: "2.11.1-RC.1", server: "n1", replicas: 3))
        XCTAssertEqual(NatsServerVersion("2.12")?.description, "2.12.0")
        for bad in ["", "2", "x.y.z", "2..1", "2.11.0.1", "-1.2.3", "2.1234567.0"] {
            XCTAssertNil(NatsServerVersion(bad), bad)
        }
        let ordered = ["2.9.10", "2.10.0", "2.10.22", "2.11.0", "2.11.4", "3.0.0"].compactMap(NatsServerVersion.init)
        XCTAssertEqual(ordered.count, 6)
        XCTAssertEqual(ordered, ordered.sorted())
        XCTAssertLessThan(try XCTUnwrap(NatsServerVersion("2.10.29")), NatsServerVersion.linearizableCAS)
        XCTAssertFalse(try XCTUnwrap(NatsServerVersion("2.11.0")) < NatsServerVersion.linearizableCAS)
    }

    func testOnlyReplicatedBucketsOnOldServersAreRefused() {
        let line = NatsServerVersion.refusal(version: "2.10.7", server: "n1:4222", replicas: 3)
        XCTAssertNotNil(line)
        XCTAssertTrue(line?.contains("nats-server 2.10.7 at n1:4222") ?? false, line ?? "")
        XCTAssertTrue(line?.contains("2.11 or later") ?? false, line ?? "")
        XCTAssertFalse(line?.contains("\n") ?? true, "one line")
        XCTAssertNil(NatsServerVersion.refusal(version: "2.10.7", server: "n1", replicas: 1), "R1 is not affected")
        XCTAssertNil(NatsServerVersion.refusal(version: "2.11.1", server: "n1", replicas: 3))
        XCTAssertNotNil(NatsServerVersion.refusal(version: nil, server: "n1", replicas: 3), "no version: refused")
        XCTAssertNotNil(NatsServerVersion.refusal(version: "garbage", server: "n1", replicas: 3))
    }

    func testTheInfoLineGivesTheVersionAndTheClusterPeers() {
        let info = NatsServerVersion.info(
            line: #"INFO {"server_id":"N","version":"2.9.10","connect_urls":["127.0.0.1:4223","10.0.0.2:4222"]}"#)
        XCTAssertEqual(info?.version, "2.9.10")
        XCTAssertEqual(info?.connectURLs, ["127.0.0.1:4223", "10.0.0.2:4222"])
        XCTAssertNil(NatsServerVersion.info(line: "PING"))
        XCTAssertNil(NatsServerVersion.info(line: "INFO not json"))
        XCTAssertNil(NatsServerVersion.info(line: "INFO [1,2]").map { _ in 1 })
    }
}
