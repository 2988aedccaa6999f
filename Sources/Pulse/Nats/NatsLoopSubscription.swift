// Nats/NatsLoopSubscription.swift — owns a subscription read on the loop
// thread itself: a synchronous libnats subscription drained right after
// `natsConnection_ProcessReadEvent` has parsed what the socket brought.
//
// Why: an asynchronous subscription hands each message to the library's
// delivery thread (a futex wake), which must post it back to the loop
// through the doorway (an eventfd write, a second loop wake) before the loop
// can judge it. For the beat subject that round costs every beat — the
// node's own frame always comes back — two loop wakes instead of one and a
// helper thread's work. Read here, the echo costs the one wake that read it.
//
// Guarantees (read against libnats 3.4.1, src/sub.c and src/conn.c):
// - Never blocks the loop: `natsSubscription_GetPending`,
//   `natsSubscription_GetDropped` and `natsSubscription_NextMsg` with timeout
//   0 take the subscription's own mutex only (held by the library just to
//   queue a message, which happens inside `ProcessReadEvent` on this very
//   thread). No connection mutex on this path beyond what `ProcessReadEvent`
//   already takes. A synchronous subscription starts no thread.
// - Bounded work per wake: at most `maxPerWake` messages reach the handler;
//   the rest queued at that moment are destroyed unread (no parse) and
//   counted as `rejected{reason="over_wake_budget"}`. The client itself keeps
//   at most `pendingMessages` / `pendingBytes` queued (subscription pending
//   limits): beyond them it drops on arrival, counted here as
//   `rejected{reason="pending_limit"}` (from the subscription's dropped count).
//   One read event parses at most the client's read buffer (32 KiB), so a
//   flood on the subject costs a wake at most `maxPerWake` handler calls
//   plus `pendingMessages` cheap destroys.
// - Allocation-free on the loop side: the handler sees the payload's bytes
//   in place (`UnsafeRawBufferPointer`, valid during the call only); the
//   message itself was allocated by the client while parsing, and is freed
//   here directly (`natsMsg_free`, see Sources/CNats/shim.h) rather than
//   handed to the library's GC thread (no futex wake per message).
import CLoop
import CNats

/// A NATS subscription whose messages are read on the loop thread right
/// after each read event (see the file comment). Made by
/// `NatsLink.subscribeOnLoop`; survives reconnects like the other
/// subscriptions (re-opened on each new connection).
final class NatsLoopSubscription {
    /// Bounds of the work one read event may cause.
    struct Limits {
        /// Messages handed to the handler per read event.
        var maxPerWake: Int
        /// The client's pending limits for this subscription: messages and bytes.
        var pendingMessages: Int32
        var pendingBytes: Int32
    }

    let subject: String
    let limits: Limits
    /// Where refusals are counted, and under which surface.
    let rejected: RejectedInput
    let surface: InputSurface
    /// Called for each message read (loop thread): the payload, valid during
    /// the call only, and the wall-clock time (Unix ns) the loop read it.
    let handler: (UnsafeRawBufferPointer, Int64) -> Void
    /// The library's subscription on the current connection, nil between connections.
    private(set) var raw: OpaquePointer?
    /// The subscription's dropped count already counted as rejected.
    private var droppedCounted: Int64 = 0
    /// Messages handed to the handler and dropped over the budget, since start (tests, metrics).
    private(set) var delivered: UInt64 = 0
    private(set) var overBudget: UInt64 = 0
    private(set) var pendingLimitDrops: UInt64 = 0

    init(
        subject: String, limits: Limits, rejected: RejectedInput, surface: InputSurface,
        handler: @escaping (UnsafeRawBufferPointer, Int64) -> Void
    ) {
        precondition(limits.maxPerWake > 0 && limits.pendingMessages > 0 && limits.pendingBytes > 0)
        self.subject = subject
        self.limits = limits
        self.rejected = rejected
        self.surface = surface
        self.handler = handler
    }

    /// Subscribes on `connection` (loop thread, once it is connected).
    /// Returns the status of the subscribe.
    func open(on connection: OpaquePointer) -> natsStatus {
        guard raw == nil else { return NATS_OK }
        var sub: OpaquePointer?
        let status = natsConnection_SubscribeSync(&sub, connection, subject)
        guard status == NATS_OK, let sub else { return status }
        // Pending limits before any message can be queued beyond them: the
        // SUB was only appended to the client's buffer (flushed later on
        // this thread), so nothing has arrived yet.
        _ = natsSubscription_SetPendingLimits(sub, limits.pendingMessages, limits.pendingBytes)
        raw = sub
        droppedCounted = 0
        return NATS_OK
    }

    /// Hands the library's subscription over (the connection closed, or
    /// shutdown); the caller destroys it.
    func release() -> OpaquePointer? {
        defer { raw = nil }
        return raw
    }

    /// Loop thread, right after `natsConnection_ProcessReadEvent`: reads what
    /// the client queued, within `limits` (see the file comment).
    func drain() {
        guard let raw else { return }
        var pending: Int32 = 0
        // Not an error to report: a closed subscription (its connection
        // closed in this read event) is released by the closed callback.
        guard natsSubscription_GetPending(raw, &pending, nil) == NATS_OK else { return }
        var dropped: Int64 = 0
        if natsSubscription_GetDropped(raw, &dropped) == NATS_OK, dropped > droppedCounted {
            let fresh = dropped &- droppedCounted
            droppedCounted = dropped
            pendingLimitDrops &+= UInt64(fresh)
            rejected.record(surface, "pending_limit", count: UInt64(fresh))
        }
        guard pending > 0 else { return }
        let receivedNs = cloop_realtime_ns()
        var handed = 0
        // `pending` messages plus one call that only reports a slow consumer
        // (NextMsg returns NATS_SLOW_CONSUMER once, without a message, after
        // the client dropped some).
        var calls = Int(pending) + 1
        while calls > 0 {
            calls -= 1
            var msg: OpaquePointer?
            let status = natsSubscription_NextMsg(&msg, raw, 0)
            if status == NATS_SLOW_CONSUMER { continue }
            guard status == NATS_OK, let msg else { break }
            if handed < limits.maxPerWake {
                handed += 1
                delivered &+= 1
                let count = Int(natsMsg_GetDataLength(msg))
                handler(UnsafeRawBufferPointer(start: natsMsg_GetData(msg), count: count), receivedNs)
            } else {
                overBudget &+= 1
                rejected.record(surface, "over_wake_budget")
            }
            // Freed here, not through `natsMsg_Destroy`: that hands the
            // message to the library's GC thread, a futex wake per echo on
            // the loop (seen with `strace -k`). A message from `NextMsg` of a
            // plain subscription is one block without headers to keep.
            natsMsg_free(UnsafeMutableRawPointer(msg))
        }
    }
}
