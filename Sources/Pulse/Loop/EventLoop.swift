// Loop: the Swift face of CLoop. Owns the single loop thread's registrations,
// dispatches ready events to handlers (priority registrations first, so a due
// beat is served before admin or NATS work), drains the cross-thread doorway,
// and runs the `beforeSleep` hooks once per turn.
//
// Internal completions (fault 5 of issue #10) never share the doorway with
// NATS deliveries: `postCompletion` appends to its own queue, which the loop
// drains at every turn, and only the wake-up goes through the doorway. A
// burst of NATS messages can fill the doorway (those deliveries are dropped
// and counted by CLoop), but a Raft store's or the data dir's completion is
// never lost, so `readyInFlight` always clears. The queue is bounded by the
// work in flight (one Raft Ready, snapshot saves, data-dir writes).
import CLoop
import Glibc
import Synchronization

/// Something the loop calls when its registration is ready.
protocol LoopHandler: AnyObject {
    /// `events` is a mask of `CLOOP_READ`, `CLOOP_WRITE`, `CLOOP_HANGUP`, `CLOOP_ERROR`.
    func loopEvent(token: UInt32, events: UInt32)
}

/// Work that runs once per loop turn, before the loop sleeps.
protocol BeforeSleepHandler: AnyObject {
    func beforeSleep()
}

/// Receives doorway messages of the kinds it registered for.
protocol DoorwayHandler: AnyObject {
    func doorwayMessage(_ message: cloop_msg_t)
}

/// Errors from loop operations, with the errno that caused them.
struct LoopError: Error, CustomStringConvertible {
    let operation: String
    let errno: Int32
    var description: String { "\(operation): \(String(cString: strerror(errno)))" }
}

/// Kinds of doorway messages; each subsystem owns a range.
enum DoorwayKind: UInt32 {
    case stop = 1
    /// `ptr` is a retained `LoopCallback` to run on the loop thread.
    case callback = 2
    /// Wakes the loop for `EventLoop.postCompletion` (no payload).
    case completion = 3
    case natsAttach = 10
    case natsRead = 11
    case natsWrite = 12
    case natsDetach = 13
    /// `ptr` is the natsConnection now connected (connect thread or the
    /// client's callback thread); `arg` is 1 for a reconnect.
    case natsConnected = 14
    /// `ptr` is a natsConnection the client closed for good (callback thread).
    case natsClosed = 15
    /// `ptr` is a natsConnection still trying its first connect (connect
    /// thread): the loop owns it for shutdown but does not call into it.
    case natsPending = 16
    /// `ptr` is a natsConnection the client reports disconnected.
    case natsDisconnected = 17
}

/// A closure handed to the loop thread through the doorway.
final class LoopCallback {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// When a loop turn woke: wall (CLOCK_REALTIME) and monotonic ns.
struct WakeStamp {
    var wallNs: Int64
    var monoNs: Int64
}

/// A single-threaded epoll loop. Create it, register handlers, then `run()`
/// on the thread that will own it. Only `post` and `requestStop` may be
/// called from other threads.
final class EventLoop {
    /// The C loop: only this type calls into it, through checked methods.
    private let raw: OpaquePointer
    let maxSlots: Int
    private var handlers: [LoopHandler?]
    private var priority: [Bool]
    /// Timers that run at the end of another turn once nearly due
    /// (`armCoalescing`); a few entries, searched linearly.
    private var coalescing: [CoalescingTimer] = []
    private struct CoalescingTimer {
        let token: UInt32
        let intervalNs: Int64
        let earlyNs: Int64
        var dueMonoNs: Int64
    }
    /// Each timer's clock (`makeTimer`), to place a priority timer's expiry on the wall clock.
    private var timerClocks: [clockid_t]
    /// When the last armed priority timer (the beat's) expires, wall ns;
    /// `.max` when disarmed. The doorway's time budget ends before it.
    private(set) var priorityDueWallNs: Int64 = .max
    /// When that timer was armed, wall ns: a wake armed less than
    /// `doorwayGuardMinLeadNs` ahead (the planner's 1 ms retries) does not
    /// hold the doorway (see `beatIsDue`).
    private var priorityArmedWallNs: Int64 = 0
    /// Doorway messages drained and not run yet: `messages[heldStart..<heldEnd]`
    /// (held over a due beat by the time budget; run first in later turns).
    private var heldStart = 0
    private var heldEnd = 0
    /// Turns in which the time budget held doorway messages over a due beat.
    private(set) var doorwayHeldTurns: UInt64 = 0
    private var doorwayHandlers: [UInt32: DoorwayHandler] = [:]
    private var beforeSleepHandlers: [BeforeSleepHandler] = []
    private let events: UnsafeMutablePointer<cloop_event_t>
    private let eventCapacity: Int32
    private let messages: UnsafeMutablePointer<cloop_msg_t>
    private let messageCapacity: Int32 = 64
    private(set) var stopping = false
    /// Monotonic time of the last completed turn; `/live` reads it.
    private(set) var lastTurnMonotonicNs: Int64 = 0
    /// The clocks read once when the last wait returned with events (redis'
    /// `updateCachedTime`): the wake time handlers of this turn hand on
    /// (the beat driver's wake lateness and records), one read for all.
    private(set) var wake = WakeStamp(wallNs: 0, monoNs: 0)
    /// Number of completed turns.
    private(set) var turns: UInt64 = 0
    /// Turns whose wait returned events (the rest timed out): how often the
    /// loop thread woke (`backbeat_loop_wakes_total`).
    private(set) var wakes: UInt64 = 0
    /// Completions of the node's own background work (see the header).
    private let completions = Mutex<[() -> Void]>([])
    /// Upper bound of completions waiting: far above the work in flight; past
    /// it the node's own code is broken (an invariant, not input).
    static let completionCapacity = 4096

    init(maxSlots: Int = 1024, queueCapacity: Int = 1024) throws {
        guard let raw = cloop_create(UInt32(maxSlots), UInt32(queueCapacity)) else {
            throw LoopError(operation: "cloop_create", errno: Glibc.errno)
        }
        self.raw = raw
        self.maxSlots = maxSlots
        self.handlers = Array(repeating: nil, count: maxSlots)
        self.priority = Array(repeating: false, count: maxSlots)
        self.timerClocks = Array(repeating: CLOCK_REALTIME, count: maxSlots)
        self.eventCapacity = Int32(min(maxSlots, 256))
        self.events = .allocate(capacity: Int(eventCapacity))
        self.messages = .allocate(capacity: Int(messageCapacity))
    }

    deinit {
        cloop_destroy(raw)
        events.deallocate()
        messages.deallocate()
    }

    var onLoopThread: Bool { cloop_on_loop_thread(raw) }

    /// Registers `fd`; `owned` fds are closed on removal.
    @discardableResult
    func register(fd: Int32, interest: UInt32, owned: Bool, priority isPriority: Bool = false, handler: LoopHandler)
        throws
        -> UInt32
    {
        var token: UInt32 = 0
        let rc = cloop_add(raw, fd, interest, owned, &token)
        guard rc == 0 else { throw LoopError(operation: "register fd \(fd)", errno: -rc) }
        handlers[Int(token)] = handler
        priority[Int(token)] = isPriority
        return token
    }

    /// Creates a timerfd on `clock` and registers it.
    func makeTimer(clock: clockid_t, priority isPriority: Bool, handler: LoopHandler) throws -> UInt32 {
        var token: UInt32 = 0
        let rc = cloop_timer_create(raw, clock, &token)
        guard rc == 0 else { throw LoopError(operation: "timerfd_create", errno: -rc) }
        handlers[Int(token)] = handler
        priority[Int(token)] = isPriority
        timerClocks[Int(token)] = clock
        return token
    }

    // MARK: timers (checked: nothing reaches `raw` from outside the loop)

    /// What reading a timer found.
    enum TimerRead: Equatable {
        /// Expired this many times since the last read (0: a spurious wake).
        case expired(UInt64)
        /// A CLOCK_REALTIME timer armed with `cancelOnSet` saw the wall clock step.
        case clockStepped
        /// The read failed (the timer is not ours any more): a broken invariant upstream.
        case failed(Int32)
    }

    /// Arms `token` to expire `afterNs` from now, then every `intervalNs` (0: once).
    func armTimer(_ token: UInt32, afterNs: Int64, intervalNs: Int64 = 0) throws {
        let rc = cloop_timer_arm_after(raw, token, afterNs, intervalNs)
        guard rc == 0 else { throw LoopError(operation: "timerfd_settime (after \(afterNs) ns)", errno: -rc) }
        if priority[Int(token)] {
            priorityArmedWallNs = cloop_realtime_ns()
            priorityDueWallNs = priorityArmedWallNs &+ afterNs
        }
    }

    /// Arms `token` to expire once at `atNs` on its clock; with `cancelOnSet`
    /// (CLOCK_REALTIME) a wall-clock step reads as `.clockStepped`.
    func armTimer(_ token: UInt32, atNs: Int64, cancelOnSet: Bool) throws {
        let rc = cloop_timer_arm_at(raw, token, atNs, cancelOnSet)
        guard rc == 0 else { throw LoopError(operation: "timerfd_settime (at \(atNs) ns)", errno: -rc) }
        if priority[Int(token)] {
            priorityArmedWallNs = cloop_realtime_ns()
            priorityDueWallNs =
                timerClocks[Int(token)] == CLOCK_REALTIME
                ? atNs : atNs &- cloop_monotonic_ns() &+ priorityArmedWallNs
        }
    }

    /// Arms `token` (a CLOCK_MONOTONIC timer) to run every `intervalNs`, or
    /// up to `earlyNs` sooner at the end of a turn the loop makes anyway (a
    /// beat's): periodic work that need not be punctual then costs no wake
    /// of its own (issue 24: at 600 bpm a timer-only node woke as often for
    /// its housekeeping, admin sweep and Raft ticks as for its beats). The
    /// timerfd, re-armed once after each run, is the backstop of a loop with
    /// nothing else to do. The handler runs as for an expiry; its
    /// `readTimer` may then read `.expired(0)`.
    func armCoalescing(_ token: UInt32, intervalNs: Int64, earlyNs: Int64) throws {
        precondition(intervalNs > 0 && earlyNs >= 0 && earlyNs < intervalNs, "a coalescing timer's window")
        coalescing.removeAll { $0.token == token }
        coalescing.append(
            CoalescingTimer(
                token: token, intervalNs: intervalNs, earlyNs: earlyNs, dueMonoNs: cloop_monotonic_ns() &+ intervalNs))
        try armTimer(token, afterNs: intervalNs)
    }

    /// The coalescing timer at `index` ran now: due again an interval later.
    private func rearmCoalescing(_ index: Int, nowMonoNs: Int64) {
        let timer = coalescing[index]
        coalescing[index].dueMonoNs = nowMonoNs &+ timer.intervalNs
        let rc = cloop_timer_arm_after(raw, timer.token, timer.intervalNs, 0)
        // Our own timerfd refused: the loop itself is broken (an invariant).
        precondition(rc == 0 || Self.isStale(rc), "timerfd_settime of a coalescing timer: \(rc)")
    }

    /// End of a turn: runs the coalescing timers within their early window.
    private func runDueCoalescing() {
        // Not within the doorway's guard before a beat: next turn.
        guard !coalescing.isEmpty, !beatIsDue() else { return }
        let now = cloop_monotonic_ns()
        var i = 0
        while i < coalescing.count {
            let timer = coalescing[i]
            if now >= timer.dueMonoNs &- timer.earlyNs, let handler = handlers[Int(timer.token)] {
                // Re-arming cleared the timerfd's count: its `readTimer` needs no read.
                rearmCoalescing(i, nowMonoNs: now)
                runningEarly = timer.token
                handler.loopEvent(token: timer.token, events: UInt32(CLOOP_READ))
                runningEarly = nil
            }
            i += 1
        }
    }

    /// The coalescing timer whose handler runs early now (`readTimer` reads nothing).
    private var runningEarly: UInt32?

    /// A coalescing timer's own expiry was dispatched: re-arm it.
    private func coalescingFired(_ token: UInt32) {
        guard let i = coalescing.firstIndex(where: { $0.token == token }) else { return }
        rearmCoalescing(i, nowMonoNs: cloop_monotonic_ns())
    }

    /// Disarms `token`; false when the timer is not ours any more.
    @discardableResult
    func disarmTimer(_ token: UInt32) -> Bool {
        coalescing.removeAll { $0.token == token }
        if priority[Int(token)] { priorityDueWallNs = .max }
        return cloop_timer_disarm(raw, token) == 0
    }

    /// Reads (and so clears) `token`'s expirations.
    @discardableResult
    func readTimer(_ token: UInt32) -> TimerRead {
        if token == runningEarly { return .expired(0) }
        let n = cloop_timer_read(raw, token)
        if n >= 0 { return .expired(UInt64(n)) }
        return n == -Int64(ECANCELED) ? .clockStepped : .failed(Int32(truncatingIfNeeded: -n))
    }

    /// Reads one signal from the signalfd `token` (0: none pending).
    func readSignal(_ token: UInt32) -> Int32 { cloop_signal_read(raw, token) }

    /// Posts refused because the doorway's queue was full.
    var postsDropped: UInt64 { cloop_post_dropped(raw) }

    /// The fd of a live registration (-1: the token is not in use).
    func fd(_ token: UInt32) -> Int32 { cloop_fd(raw, token) }

    /// Blocks `signals` (call before any thread starts) and delivers them
    /// through a signalfd; read them with `cloop_signal_read`.
    func watchSignals(_ signals: [Int32], handler: LoopHandler) throws -> UInt32 {
        var token: UInt32 = 0
        var list = signals
        let rc = cloop_signals_create(raw, &list, Int32(list.count), &token)
        guard rc == 0 else { throw LoopError(operation: "signalfd", errno: -rc) }
        handlers[Int(token)] = handler
        return token
    }

    /// Modifications and removals that found their registration stale (the
    /// fd was closed behind the loop's back, maybe with its number reused, or
    /// the token was already removed): counted no-ops, never a trap, since a
    /// library closing its socket on its own thread is outside our control.
    private(set) var staleOperations: UInt64 = 0

    /// Changes a registration's interest. Stale registrations (see
    /// `staleOperations`) are a counted no-op; any other failure is a broken
    /// invariant of the loop itself (bad epoll fd, no memory) and traps.
    func modify(token: UInt32, interest: UInt32) {
        let rc = cloop_modify(raw, token, interest)
        if rc == 0 { return }
        if Self.isStale(rc) {
            staleOperations &+= 1
            return
        }
        preconditionFailure("cloop_modify: \(rc)")
    }

    /// The interest of a live registration (0 if the token is not in use).
    func interest(token: UInt32) -> UInt32 { cloop_interest(raw, token) }

    /// Unregisters `token` (closing the fd if owned). Removing a stale
    /// registration frees the slot and is counted; the doorway's own slot is
    /// never removed (an invariant: trap).
    func remove(token: UInt32) {
        precondition(token != CLOOP_DOORWAY_TOKEN, "the doorway is never removed")
        let rc = cloop_remove(raw, token)
        if rc != 0 {
            precondition(Self.isStale(rc), "cloop_remove: \(rc)")
            staleOperations &+= 1
        }
        handlers[Int(token)] = nil
        priority[Int(token)] = false
        coalescing.removeAll { $0.token == token }
    }

    /// Errors that mean "this registration's fd is no longer ours".
    private static func isStale(_ rc: Int32) -> Bool {
        rc == -EBADF || rc == -ENOENT || rc == -EPERM || rc == -ESTALE || rc == -EINVAL
    }

    func setDoorwayHandler(_ handler: DoorwayHandler, for kinds: [DoorwayKind]) {
        for kind in kinds { doorwayHandlers[kind.rawValue] = handler }
    }

    /// The handler of `kind`'s messages, if any (several NATS links share one).
    func doorwayHandler(for kind: DoorwayKind) -> DoorwayHandler? { doorwayHandlers[kind.rawValue] }

    /// Adds work to run once per turn, after events are dispatched and before
    /// the loop sleeps (flushes and other batched work).
    func addBeforeSleep(_ handler: BeforeSleepHandler) {
        beforeSleepHandlers.append(handler)
    }

    /// Thread-safe: hands a message to the loop thread. False when the queue is full.
    @discardableResult
    func post(kind: DoorwayKind, arg: Int32 = 0, value: UInt64 = 0, pointer: UnsafeMutableRawPointer? = nil) -> Bool {
        var message = cloop_msg_t(kind: kind.rawValue, arg: arg, value: value, ptr: pointer)
        return cloop_post(raw, &message) == 0
    }

    /// Thread-safe: runs `body` on the loop thread during a coming turn.
    /// False (and `body` dropped) when the doorway is full. Allocates: not for the beat path.
    @discardableResult
    func postCallback(_ body: @escaping () -> Void) -> Bool {
        let box = Unmanaged.passRetained(LoopCallback(body))
        if post(kind: .callback, pointer: box.toOpaque()) { return true }
        box.release()
        return false
    }

    /// Thread-safe: runs `body` on the loop thread during a coming turn,
    /// never dropped (unlike `postCallback`): for completions of work the
    /// loop started (store syncs, data-dir writes). Allocates.
    func postCompletion(_ body: @escaping () -> Void) {
        completions.withLock { queue in
            precondition(queue.count < Self.completionCapacity, "completion queue overflow")
            queue.append(body)
        }
        // A full doorway means the loop is awake already; it drains every turn.
        _ = post(kind: .completion)
    }

    /// Runs every completion waiting (loop thread, every turn).
    private func drainCompletions() {
        let batch = completions.withLock { queue -> [() -> Void] in
            guard !queue.isEmpty else { return [] }
            let taken = queue
            queue.removeAll(keepingCapacity: true)
            return taken
        }
        for body in batch { body() }
    }

    /// Thread-safe: asks the loop to return from `run()` after the current turn.
    func requestStop() { post(kind: .stop) }

    /// Binds the loop to the calling thread; `run` and `turn` do it too.
    func bindToCurrentThread() { cloop_bind_thread(raw) }

    /// Runs until `requestStop()`. Each wait is bounded so that `/live` and
    /// housekeeping see the loop turn even when nothing happens.
    func run(maxWaitNs: Int64 = 250_000_000) {
        bindToCurrentThread()
        while !stopping {
            turn(timeoutNs: maxWaitNs)
        }
    }

    /// One turn: wait, dispatch priority events, then the rest, then the
    /// doorway, then `beforeSleep`.
    func turn(timeoutNs: Int64) {
        if !cloop_on_loop_thread(raw) { bindToCurrentThread() }
        let n = cloop_wait(raw, events, eventCapacity, timeoutNs)
        if n > 0 {
            wakes &+= 1
            wake = WakeStamp(wallNs: cloop_realtime_ns(), monoNs: cloop_monotonic_ns())
            dispatch(count: Int(n), priorityPass: true)
            dispatch(count: Int(n), priorityPass: false)
        }
        // Messages the time budget held over a beat: their turn now (the
        // doorway's eventfd may be quiet, its queue empty).
        if heldStart < heldEnd { runHeldMessages() }
        drainCompletions()
        runDueCoalescing()
        for i in 0..<beforeSleepHandlers.count { beforeSleepHandlers[i].beforeSleep() }
        lastTurnMonotonicNs = cloop_monotonic_ns()
        turns &+= 1
    }

    private func dispatch(count: Int, priorityPass: Bool) {
        for i in 0..<count {
            let event = events[i]
            let token = event.token
            if token == CLOOP_DOORWAY_TOKEN {
                if !priorityPass { drainDoorway() }
                continue
            }
            guard priority[Int(token)] == priorityPass else { continue }
            // A previous callback in this batch may have removed or replaced it.
            guard cloop_live(raw, token, event.generation), let handler = handlers[Int(token)] else { continue }
            handler.loopEvent(token: token, events: event.events)
            if !coalescing.isEmpty { coalescingFired(token) }
        }
    }

    /// Doorway messages handled per turn, like the beat subject's per-wake
    /// budget: a flood of NATS deliveries (timeline requests) costs each turn
    /// at most this many callbacks, and the rest wait for the next turn, in
    /// which a due beat is dispatched first (`cloop_drain` re-arms the doorway
    /// while messages remain, so the loop does not sleep on them).
    static let maxDoorwayMessagesPerTurn: Int32 = 64

    /// The doorway's budget in time: no message starts within this of the
    /// beat timer's expiry (`priorityDueWallNs`), so that a flood of
    /// messages (each up to tens of µs: a refused tempo request) never
    /// delays the beat's wake and spin; the rest wait until the beat is out.
    /// Meanwhile the doorway's eventfd stays readable, so the loop polls
    /// (at most this long per beat, like the spin) rather than sleeps.
    static let doorwayGuardNs: Int64 = 1_000_000
    /// A priority timer this long past due without being re-armed no longer
    /// holds the doorway (it was not re-armed: nothing is due).
    static let doorwayGuardStaleNs: Int64 = 50_000_000
    /// Only a beat wake armed at least this far ahead holds the doorway. A
    /// beat that cannot be published yet (no lease, its term not started, a
    /// tempo entry not applied, a KV holder before degradation) is retried
    /// every millisecond (`PlannerConfig.retryNs`) for up to half a period:
    /// a guard on those re-arms would hold the doorway and the requests
    /// connection for the whole run, and the loop, whose doorway eventfd and
    /// requests socket stay readable, would spin at full CPU answering
    /// nothing (found by review). Planned wakes are armed a period ahead
    /// (10 ms at 6000 bpm), retries 1 ms ahead.
    static let doorwayGuardMinLeadNs: Int64 = 2_000_000

    /// Whether the doorway (and other work that can wait, such as the
    /// requests connection's reads) must wait for the beat: the beat's wake
    /// was armed at least `doorwayGuardMinLeadNs` ahead and the wall clock is
    /// inside [due − guard, due + stale).
    func beatIsDue() -> Bool {
        let due = priorityDueWallNs
        guard due != .max, due &- priorityArmedWallNs >= Self.doorwayGuardMinLeadNs else { return false }
        let now = cloop_realtime_ns()
        return now >= due &- Self.doorwayGuardNs && now < due &+ Self.doorwayGuardStaleNs
    }

    private func drainDoorway() {
        if heldStart == heldEnd {
            if beatIsDue() {
                doorwayHeldTurns &+= 1
                return  // not drained: the eventfd stays readable, the queue waits
            }
            let n = cloop_drain(raw, messages, min(messageCapacity, Self.maxDoorwayMessagesPerTurn))
            heldStart = 0
            heldEnd = Int(max(n, 0))
        }
        runHeldMessages()
    }

    /// Runs drained messages in order until none is left or the beat is due.
    private func runHeldMessages() {
        while heldStart < heldEnd {
            if beatIsDue() {
                doorwayHeldTurns &+= 1
                return
            }
            let message = messages[heldStart]
            heldStart += 1
            if message.kind == DoorwayKind.stop.rawValue {
                stopping = true
            } else if message.kind == DoorwayKind.callback.rawValue, let pointer = message.ptr {
                Unmanaged<LoopCallback>.fromOpaque(pointer).takeRetainedValue().body()
            } else if message.kind == DoorwayKind.completion.rawValue {
                continue  // drained at the end of the turn
            } else if let handler = doorwayHandlers[message.kind] {
                handler.doorwayMessage(message)
            }
        }
    }
}
