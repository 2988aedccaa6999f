// CLoop through its Swift face: timers, the doorway from other threads,
// stale events after removal, and table limits.
import CLoop
import Foundation
import Glibc
import XCTest

@testable import Pulse

private final class Recorder: LoopHandler, DoorwayHandler {
    var events: [(UInt32, UInt32)] = []
    var messages: [cloop_msg_t] = []
    var onEvent: ((UInt32) -> Void)?
    func loopEvent(token: UInt32, events: UInt32) {
        self.events.append((token, events))
        onEvent?(token)
    }
    func doorwayMessage(_ message: cloop_msg_t) { messages.append(message) }
}

final class EventLoopTests: XCTestCase {
    func testTimerFiresAtAbsoluteInstant() throws {
        let loop = try EventLoop()
        let recorder = Recorder()
        let token = try loop.makeTimer(clock: CLOCK_REALTIME, priority: true, handler: recorder)
        let at = cloop_realtime_ns() + 20_000_000
        try loop.armTimer(token, atNs: at, cancelOnSet: true)
        Harness.waitUntil(seconds: 2) {
            loop.turn(timeoutNs: 50_000_000)
            return !recorder.events.isEmpty
        }
        XCTAssertGreaterThanOrEqual(cloop_realtime_ns(), at)
        XCTAssertEqual(recorder.events.first?.0, token)
        XCTAssertEqual(loop.readTimer(token), .expired(1))
    }

    /// A coalescing timer (issue 24) runs at the end of a turn the loop makes
    /// anyway once within `earlyNs` of its due time, without a wake of its
    /// own and without reading its timerfd; with nothing else happening its
    /// timerfd fires once per interval; removed, it never runs again.
    func testCoalescingTimerRunsAtAnotherTurnWithinItsWindow() throws {
        let loop = try EventLoop()
        let ticks = Recorder()
        var reads: [EventLoop.TimerRead] = []
        let token = try loop.makeTimer(clock: CLOCK_MONOTONIC, priority: false, handler: ticks)
        ticks.onEvent = { reads.append(loop.readTimer($0)) }
        let other = Recorder()
        // Not a priority timer: early runs wait out a priority timer's guard.
        let beat = try loop.makeTimer(clock: CLOCK_MONOTONIC, priority: false, handler: other)
        other.onEvent = { _ = loop.readTimer($0) }
        let intervalNs: Int64 = 200_000_000
        try loop.armCoalescing(token, intervalNs: intervalNs, earlyNs: 150_000_000)
        let armedNs = cloop_monotonic_ns()
        // Another event 20 ms in: too early for the timer (due − early = 50 ms).
        try loop.armTimer(beat, afterNs: 20_000_000)
        Harness.waitUntil(seconds: 2) {
            loop.turn(timeoutNs: 10_000_000)
            return !other.events.isEmpty
        }
        XCTAssertTrue(ticks.events.isEmpty, "not within its window yet")
        // Another event 80 ms in: within the window, so the timer runs in that turn.
        try loop.armTimer(beat, afterNs: max(1, armedNs + 80_000_000 - cloop_monotonic_ns()))
        let wakesBefore = loop.wakes
        Harness.waitUntil(seconds: 2) {
            loop.turn(timeoutNs: 150_000_000)
            return other.events.count >= 2
        }
        XCTAssertEqual(loop.wakes - wakesBefore, 1, "one wake: the other event's")
        XCTAssertEqual(ticks.events.count, 1, "ran in the other event's turn")
        XCTAssertEqual(reads.first, .expired(0), "an early run reads no expiry")
        XCTAssertLessThan(cloop_monotonic_ns() - armedNs, intervalNs, "before its own due time")
        // Nothing else happens (not even a bounded wait's timeout, itself a
        // turn): its own timerfd fires, an interval after that run.
        let ranNs = cloop_monotonic_ns()
        Harness.waitUntil(seconds: 2) {
            loop.turn(timeoutNs: 1_000_000_000)
            return ticks.events.count >= 2
        }
        XCTAssertEqual(ticks.events.count, 2)
        XCTAssertGreaterThanOrEqual(cloop_monotonic_ns() - ranNs, intervalNs - 1_000_000, "the backstop")
        XCTAssertEqual(reads.last, .expired(1), "a backstop run reads its expiry")
        // Removed: it never runs again, early or late.
        loop.remove(token: token)
        try loop.armTimer(beat, afterNs: 150_000_000)
        let deadline = cloop_monotonic_ns() + 500_000_000
        while cloop_monotonic_ns() < deadline { loop.turn(timeoutNs: 50_000_000) }
        XCTAssertEqual(ticks.events.count, 2, "a removed coalescing timer is gone")
    }

    func testTurnStampsTheWakeOnceForItsHandlers() throws {
        let loop = try EventLoop()
        let recorder = Recorder()
        let token = try loop.makeTimer(clock: CLOCK_REALTIME, priority: true, handler: recorder)
        var seen: [WakeStamp] = []
        recorder.onEvent = { _ in seen.append(loop.wake) }
        let at = cloop_realtime_ns() + 5_000_000
        try loop.armTimer(token, atNs: at, cancelOnSet: false)
        Harness.waitUntil(seconds: 2) {
            loop.turn(timeoutNs: 50_000_000)
            return !recorder.events.isEmpty
        }
        let after = cloop_realtime_ns()
        let stamp = try XCTUnwrap(seen.first, "the handler ran")
        XCTAssertGreaterThanOrEqual(stamp.wallNs, at, "stamped after the timer expired")
        XCTAssertLessThanOrEqual(stamp.wallNs, after)
        XCTAssertGreaterThan(stamp.monoNs, 0)
        XCTAssertEqual(loop.wake.wallNs, stamp.wallNs, "one stamp per wake, the same for every handler of it")
    }

    func testDoorwayDeliversMessagesFromOtherThreadsInOrder() throws {
        let loop = try EventLoop(maxSlots: 16, queueCapacity: 4096)
        let recorder = Recorder()
        loop.setDoorwayHandler(recorder, for: [.natsRead])
        loop.bindToCurrentThread()
        let threads = 4
        let perThread = 500
        let group = DispatchGroup()
        for t in 0..<threads {
            DispatchQueue.global().async(group: group) {
                for i in 0..<perThread { loop.post(kind: .natsRead, arg: Int32(t), value: UInt64(i)) }
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 10), .success)
        Harness.waitUntil(seconds: 5) {
            loop.turn(timeoutNs: 10_000_000)
            return recorder.messages.count == threads * perThread
        }
        XCTAssertEqual(recorder.messages.count, threads * perThread)
        for t in 0..<threads {
            let values = recorder.messages.filter { $0.arg == Int32(t) }.map(\.value)
            XCTAssertEqual(values, (0..<perThread).map(UInt64.init), "per-thread FIFO")
        }
    }

    func testDoorwayIsBounded() throws {
        let loop = try EventLoop(maxSlots: 4, queueCapacity: 8)
        for _ in 0..<8 { XCTAssertTrue(loop.post(kind: .natsRead)) }
        XCTAssertFalse(loop.post(kind: .natsRead), "a full queue refuses instead of growing")
        XCTAssertEqual(loop.postsDropped, 1)
    }

    /// Fault 5 of issue #10: a completion is never dropped, even when NATS
    /// deliveries have filled the doorway (e72aafc lost the Raft store's
    /// completion there and the node never sent another message).
    func testCompletionsSurviveAFullDoorway() throws {
        let loop = try EventLoop(maxSlots: 4, queueCapacity: 8)
        var delivered = 0
        var posted = 0
        while loop.postCallback({ delivered += 1 }) { posted += 1 }
        XCTAssertEqual(posted, 8, "the doorway is full")
        var completed = 0
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            for _ in 0..<3 { loop.postCompletion { completed += 1 } }
            done.signal()
        }
        done.wait()
        loop.turn(timeoutNs: 0)
        loop.turn(timeoutNs: 0)
        XCTAssertEqual(completed, 3, "every completion ran")
        XCTAssertEqual(delivered, 8)
    }

    func testRemovedRegistrationGetsNoStaleEvents() throws {
        let loop = try EventLoop()
        let a = Recorder()
        let b = Recorder()
        var fdsA: [Int32] = [0, 0]
        var fdsB: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fdsA), 0)
        XCTAssertEqual(pipe(&fdsB), 0)
        defer { [fdsA[1], fdsB[1]].forEach { close($0) } }
        let tokenA = try loop.register(fd: fdsA[0], interest: UInt32(CLOOP_READ), owned: true, handler: a)
        let tokenB = try loop.register(fd: fdsB[0], interest: UInt32(CLOOP_READ), owned: true, handler: b)
        // Both readable in the same batch; the first callback removes the other.
        _ = write(fdsA[1], "x", 1)
        _ = write(fdsB[1], "y", 1)
        let first = Recorder()
        _ = first
        a.onEvent = { _ in loop.remove(token: tokenB) }
        b.onEvent = { _ in loop.remove(token: tokenA) }
        loop.turn(timeoutNs: 100_000_000)
        XCTAssertEqual(a.events.count + b.events.count, 1, "the removed registration's event was dropped as stale")
    }

    func testTableLimitIsAnError() throws {
        let loop = try EventLoop(maxSlots: 3, queueCapacity: 4)  // the doorway takes one
        let r = Recorder()
        _ = try loop.makeTimer(clock: CLOCK_MONOTONIC, priority: false, handler: r)
        _ = try loop.makeTimer(clock: CLOCK_MONOTONIC, priority: false, handler: r)
        XCTAssertThrowsError(try loop.makeTimer(clock: CLOCK_MONOTONIC, priority: false, handler: r))
    }

    func testPriorityRegistrationsAreDispatchedFirst() throws {
        let loop = try EventLoop()
        let order = Recorder()
        var fdsLow: [Int32] = [0, 0]
        XCTAssertEqual(pipe(&fdsLow), 0)
        defer { close(fdsLow[1]) }
        let low = try loop.register(fd: fdsLow[0], interest: UInt32(CLOOP_READ), owned: true, handler: order)
        let high = try loop.makeTimer(clock: CLOCK_MONOTONIC, priority: true, handler: order)
        _ = write(fdsLow[1], "x", 1)
        try loop.armTimer(high, afterNs: 1)
        usleep(5_000)
        loop.turn(timeoutNs: 100_000_000)
        XCTAssertEqual(order.events.map(\.0), [high, low])
    }
}
