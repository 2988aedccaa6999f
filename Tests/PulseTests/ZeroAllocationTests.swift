// The beat path allocates nothing after start-up, measured by jemalloc's own
// per-thread counter (`thread.allocatedp`) around thousands of beats that are
// encoded and published to a real nats-server.
import CLoop
import Foundation
import Logging
import PulseCore
import XCTest

@testable import Pulse

final class ZeroAllocationTests: XCTestCase {
    func testJemallocCounterIsLive() throws {
        let counter = try XCTUnwrap(cloop_thread_allocated_counter(), "jemalloc must be the process allocator")
        let before = counter.pointee
        let array = [UInt8](repeating: 7, count: 4096)
        XCTAssertEqual(array.count, 4096)
        XCTAssertGreaterThanOrEqual(counter.pointee - before, 4096, "the counter sees Swift allocations")
    }

    func testBeatPathAllocatesNothingWhilePublishing() throws {
        try beatPathAllocatesNothing(signer: nil)
    }

    /// With `-sign-key`: every frame is signed (libsodium, in place) and still
    /// nothing is allocated; the frames that arrive verify.
    func testSignedBeatPathAllocatesNothing() throws {
        let seed = [UInt8](repeating: 0x5a, count: 32)
        let signer = try PublicationSigner(seed: seed)
        let received = try beatPathAllocatesNothing(signer: signer)
        let verifier = try PublicationVerifier(publicKeys: [signer.publicKey])
        XCTAssertFalse(received.isEmpty)
        for frame in received.suffix(100) {
            XCTAssertNil(verifier.check(frame.raw), String(decoding: frame.raw, as: UTF8.self))
            XCTAssertNoThrow(try BeatFrameDecoder.decode([UInt8](frame.raw)))
        }
    }

    /// Thousands of beats encoded (and signed, with `signer`) and published to
    /// a real nats-server: 0 bytes allocated; returns the frames received.
    @discardableResult
    private func beatPathAllocatesNothing(signer: PublicationSigner?) throws -> [ReceivedFrame] {
        let nats = try NatsServer()
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.alloc.beat")
        let loop = try EventLoop()
        loop.bindToCurrentThread()
        let logger = Logger(label: "test")
        let link = NatsLink(url: nats.url, name: "alloc-test", loop: loop, logger: logger)
        link.signer = signer
        try link.start()
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                loop.turn(timeoutNs: 10_000_000)
                return link.isConnected
            }, "connected to nats-server")
        let epoch = Timeline.bootstrapEpoch(nowNs: cloop_realtime_ns() - 2_000_000_000, bpm: 600)
        let driver = try BeatDriver(
            loop: loop, nats: link, logger: logger, timeline: Timeline(epoch: epoch, bar: 8, phaseCount: 3),
            placeholder: Timeline(epoch: epoch, bar: 8, phaseCount: 3),
            clusterId: "alloc", phases: ["plan", "work", "review"], nodeId: "node-0001",
            subject: "backbeat.alloc.beat", maxOffsetMs: 500, spinMaxUs: 0)
        driver.start()
        driver.stop()  // the test drives emitBeat itself
        driver.prepareWindowIds(forBeat: 0)

        let warmup = 200
        let measured = 5000
        for i in 0..<warmup {
            driver.emitBeat(index: Int64(i % 8), nowNs: cloop_realtime_ns())
            loop.turn(timeoutNs: 0)
        }
        let counter = try XCTUnwrap(cloop_thread_allocated_counter())
        var allocated: UInt64 = 0
        var published = 0
        for i in 0..<measured {
            // The beat path (encode, sign, publish, flush), as the node counts
            // it (every beat wake). The loop's other work is not: nats.c
            // allocated 5 KB once in a turn after the first 500 ms ping (seen
            // with and without signing, in runs longer than half a second).
            let before = counter.pointee
            if driver.emitBeat(index: Int64(i % 8), nowNs: cloop_realtime_ns()).published { published += 1 }
            allocated += counter.pointee - before
            loop.turn(timeoutNs: 0)
        }
        XCTAssertEqual(allocated, 0, "bytes allocated on the beat path over \(measured) beats")
        XCTAssertEqual(published, measured, "every beat was handed to NATS")
        XCTAssertTrue(
            Harness.waitUntil(seconds: 10) {
                loop.turn(timeoutNs: 1_000_000)
                return subscriber.count >= warmup + measured
            }, "subscriber received \(subscriber.count) of \(warmup + measured)")
        link.close()
        return subscriber.received
    }

    func testTimerDrivenBeatsCountNoHotPathBytes() throws {
        let run = try TimerDrivenBeats(cluster: "timer")
        run.run(beats: 150)  // ~1.5 s of beats through the real timer path
        XCTAssertGreaterThanOrEqual(run.driver.stats.beatsPublished, 150)
        XCTAssertEqual(
            run.driver.stats.hotPathAllocatedBytes, 0, "bytes allocated between timer wake and flushed publish")
        XCTAssertTrue(run.subscriber.wait(for: 100, seconds: 5))
        run.link.close()
    }

    /// The announcement of a tempo change (JSON, logs, a background save in
    /// the service) runs after the wake's allocation count is read.
    func testTempoChangeAnnouncementIsOutsideTheBeatPath() throws {
        let run = try TimerDrivenBeats(cluster: "tempo-alloc")
        let listener = AllocatingTempoListener()
        run.driver.tempoListener = listener
        let downbeat = run.driver.timeline.nextDownbeat(atOrAfter: run.driver.nextBeat + 8)
        try run.driver.schedule(change: TempoChange(atBeat: downbeat, bpm: 5800))
        run.run(beats: 100)
        XCTAssertEqual(listener.announced.map(\.startBeat), [downbeat], "announced once, at its downbeat")
        XCTAssertEqual(listener.announced.first?.bpm, 5800)
        XCTAssertEqual(
            run.driver.stats.hotPathAllocatedBytes, 0, "the announcement's allocations are not the beat path's")
        run.link.close()
    }
}

/// Allocates on every announcement, as the service's TempoController does.
private final class AllocatingTempoListener: TempoListener {
    var announced: [TempoEpoch] = []
    var lines: [String] = []
    func tempoApplied(epoch: TempoEpoch, previousBpm: Int64) {
        announced.append(epoch)
        lines.append("tempo \(previousBpm) -> \(epoch.bpm) at \(epoch.startBeat)")
    }
}
