// Honest publish time (requirements §9): the kernel's software TX timestamp of
// a beat frame's last byte, read from the NATS socket's error queue on the
// loop. The C helper predicts the stamp's id from TCP_INFO; the beat records
// carry the stamp and say where their publish time came from.
import CLoop
import Foundation
import Logging
import PulseCore
import XCTest

@testable import Pulse

final class TxTimestampTests: XCTestCase {
    /// A loopback TCP pair: every write's stamp is read back with the id
    /// `cloop_txts_next_key` predicted, between the write's start and shortly after its return.
    func testHelperPredictsTheIdOfEachWrite() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(listener, 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p in
                XCTAssertEqual(bind(listener, p, length), 0)
                XCTAssertEqual(listen(listener, 1), 0)
                XCTAssertEqual(getsockname(listener, p, &length), 0)
            }
        }
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(client) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, length) }
        }
        XCTAssertEqual(rc, 0)
        let server = accept(listener, nil, nil)
        defer { close(server) }
        XCTAssertEqual(write(client, "before", 6), 6, "bytes written before stamping do not count")
        var base: Int64 = 0
        XCTAssertEqual(cloop_txts_enable(client, &base), 0, "SO_TIMESTAMPING refused")
        let buffer = [UInt8](repeating: 0x41, count: 2000)
        var total = 0
        for size in [1, 100, 1500, 7] {
            let before = cloop_realtime_ns()
            XCTAssertEqual(buffer.withUnsafeBytes { write(client, $0.baseAddress, size) }, size)
            let returned = cloop_realtime_ns()
            total += size
            let key = cloop_txts_next_key(client, base)
            XCTAssertEqual(key, Int64(total - 1), "id of the last byte written")
            var id: UInt32 = 0
            var ns: Int64 = 0
            XCTAssertEqual(cloop_txts_read(client, &id, &ns), 1, "stamp queued when write(2) returns (loopback)")
            XCTAssertEqual(Int64(id), key)
            XCTAssertGreaterThanOrEqual(ns, before)
            XCTAssertLessThanOrEqual(ns, returned + 1_000_000)
        }
        var id: UInt32 = 0
        var ns: Int64 = 0
        XCTAssertEqual(cloop_txts_read(client, &id, &ns), 0, "queue drained, no blocking")
    }

    /// Timer-driven beats through a real nats-server: the records say
    /// `tx_timestamp`, the stamp lies between the decision and a subscriber's
    /// receipt, and the jitter is measured from it.
    func testTimerDrivenBeatsCarryTheirTxTimestamp() throws {
        let run = try TimerDrivenBeats(cluster: "tx")
        let (driver, subscriber, link, loop) = (run.driver, run.subscriber, run.link, run.loop)
        run.run(beats: 100)
        loop.turn(timeoutNs: 1_000_000)
        let records = driver.recent.records().filter(\.published)
        XCTAssertGreaterThanOrEqual(records.count, 100)
        let stamped = records.filter { $0.source == .txTimestamp }
        XCTAssertGreaterThanOrEqual(
            stamped.count, records.count - 1,
            "records by source: \(Dictionary(grouping: records, by: \.source).mapValues(\.count))")
        for r in stamped {
            XCTAssertGreaterThanOrEqual(r.txNs, r.publishStartNs, "stamped after the decision")
            XCTAssertLessThanOrEqual(r.txNs, r.publishDoneNs + 1_000_000, "stamped before the write returned (+1 ms)")
            XCTAssertEqual(r.jitterNs, r.txNs - r.scheduledNs)
        }
        XCTAssertTrue(subscriber.wait(for: 100, seconds: 5))
        XCTAssertEqual(driver.stats.hotPathAllocatedBytes, 0, "reading the stamp allocates nothing")
        link.close()
    }
}
