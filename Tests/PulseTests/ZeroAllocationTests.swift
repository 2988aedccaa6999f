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
    /// A beat driver at 600 bpm, timer only, on `link` (tests drive `emitBeat` themselves).
    private static func driver(loop: EventLoop, link: NatsLink, cluster: String, subject: String) throws -> BeatDriver {
        let epoch = Timeline.bootstrapEpoch(nowNs: cloop_realtime_ns() - 2_000_000_000, bpm: 600)
        return try BeatDriver(
            loop: loop, nats: link, logger: Logger(label: "test"),
            timeline: Timeline(epoch: epoch, bar: 8, phaseCount: 3),
            placeholder: Timeline(epoch: epoch, bar: 8, phaseCount: 3),
            clusterId: cluster, phases: ["plan", "work", "review"], nodeId: "node-0001",
            subject: subject, maxOffsetMs: 500, spinMaxUs: 0)
    }

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
        let (loop, link) = try Harness.connectedLink(url: nats.url, name: "alloc-test")
        link.signer = signer  // read at each publish only
        let driver = try Self.driver(loop: loop, link: link, cluster: "alloc", subject: "backbeat.alloc.beat")
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

    /// The publisher hears its own frame's echo by its bytes (issue 24): a
    /// frame as a subscriber received it is one of the shell's last two
    /// frames (accepted, its index, observed: the subject's highest index
    /// moves); any other byte string (an older frame, one byte changed, a
    /// prefix, a longer payload) is not, and goes to the decoder. Its judgement is the
    /// echo policy's (a late echo is refused as the decoded one would be),
    /// and hearing it allocates nothing.
    func testOwnEchoIsHeardByItsBytesOnly() throws {
        let nats = try NatsServer()
        let subscriber = try Subscriber(url: nats.url, subject: "backbeat.echo.beat")
        let (loop, link) = try Harness.connectedLink(url: nats.url, name: "echo-test")
        let driver = try Self.driver(loop: loop, link: link, cluster: "echo", subject: "backbeat.echo.beat")
        driver.start()
        driver.stop()  // the test drives emitBeat itself
        var now = cloop_realtime_ns()
        var current = driver.timeline.beat(atOrBeforeNs: now)
        if driver.timeline.barStart(current) == current {
            // A downbeat: the previous beat is in the previous bar, whose
            // window id is not prepared (1 run in 8 failed here, and then
            // crashed on frames[1]). Start one beat later, inside the bar.
            let nextNs = driver.timeline.instantNs(ofBeat: current + 1)
            Thread.sleep(forTimeInterval: Double(max(0, nextNs - now) + 1_000_000) / 1e9)
            now = cloop_realtime_ns()
            current = driver.timeline.beat(atOrBeforeNs: now)
        }
        driver.prepareWindowIds(forBeat: current)
        XCTAssertTrue(driver.emitBeat(index: current - 1, nowNs: now).published)
        XCTAssertTrue(driver.emitBeat(index: current, nowNs: now).published)
        // The same index again (a later HLC stamp: other bytes): the shell
        // keeps the last two frames, so the first one is no longer its own.
        XCTAssertTrue(driver.emitBeat(index: current, nowNs: now).published)
        XCTAssertTrue(
            Harness.waitUntil(seconds: 5) {
                loop.turn(timeoutNs: 1_000_000)
                return subscriber.count >= 3
            }, "the three frames received")
        let frames = subscriber.received.map { [UInt8]($0.raw) }
        guard frames.count >= 3 else { return XCTFail("received \(frames.count) of 3 frames") }
        XCTAssertNotEqual(frames[1], frames[2])
        var policy = EchoPolicy.singleNode(clusterId: "echo", ownSuffix: driver.ownSuffix)
        func hear(_ bytes: [UInt8], at wallNs: Int64 = now) -> (verdict: EchoVerdict, index: Int64)? {
            bytes.withUnsafeBytes { driver.shell.hearOwn($0, wallNs: wallNs, policy: &policy) }
        }
        XCTAssertNil(hear(frames[0]), "a frame older than the last two")
        var changed = frames[2]
        changed[changed.count / 2] ^= 0x01
        XCTAssertNil(hear(changed), "one byte changed")
        XCTAssertNil(hear(Array(frames[2].dropLast())), "a prefix")
        XCTAssertNil(hear(frames[2] + [0x20]), "a longer payload")
        let seenBefore = driver.shell.lastSeenIndex
        // The frame before the last: its echo is read after the last was
        // written when the link reads at the loop's turns (NatsLink.deferReads).
        let previous = try XCTUnwrap(hear(frames[1]), "the previous frame's echo is heard")
        XCTAssertEqual(previous.verdict, .accept)
        XCTAssertEqual(previous.index, current)
        let heard = try XCTUnwrap(hear(frames[2]), "the last frame's echo is heard")
        XCTAssertEqual(heard.verdict, .accept)
        XCTAssertEqual(heard.index, current)
        XCTAssertEqual(driver.shell.lastSeenIndex, max(seenBefore, current), "observed like a decoded echo")
        let late =
            now + 10 * (driver.timeline.instantNs(ofBeat: current + 1) - driver.timeline.instantNs(ofBeat: current))
        XCTAssertEqual(hear(frames[2], at: late)?.verdict, .reject(.indexBehind), "judged by the echo policy")
        let counter = try XCTUnwrap(cloop_thread_allocated_counter())
        let before = counter.pointee
        var accepted = 0
        frames[2].withUnsafeBytes { bytes in
            for _ in 0..<1000 where driver.shell.hearOwn(bytes, wallNs: now, policy: &policy)?.verdict == .accept {
                accepted += 1
            }
        }
        XCTAssertEqual(counter.pointee - before, 0, "hearing the own echo allocates nothing")
        XCTAssertEqual(accepted, 1000)
        link.close()
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
