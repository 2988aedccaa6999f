// KV/KVClockPing.swift — clock samples between the pulses in nats-kv mode
// (issue 21, degradation): no Raft traffic carries NTP samples in this mode,
// so each pulse asks the others over NATS request/reply, on the KV
// connection (core NATS: it works while JetStream has no quorum).
//
//   ping     _BACKBEAT.<cluster>.clock   "<t1> <node id>"           reply to our inbox
//   answer   <the ping's inbox>          "<t1> <t2> <t3> <node id>"
//
// t1 is the pinger's wall clock at sending, t2/t3 the answerer's at
// receiving/answering (taken on the library's delivery thread, so the loop's
// load is not in the round trip), t4 the pinger's at receiving the answer.
// Only an answer echoing the last ping's t1 counts (a late one is dropped);
// ClockSync's bounds refuse impossible samples. A node id that breaks the
// `-node-id` rule (`KVLeasePeers.idProblem`) is refused and counted, in
// pings (not answered), answers and reports alike. `_BACKBEAT.>` is published
// by pulses only (deploy/nats: the pulse role; consumers may not).
//
// With each ping, the pulses this one saw and how long ago (the gossip that
// makes the degraded turns' ranking converge, PulsePolicy/KVLeasePeers.swift):
//
//   report   _BACKBEAT.<cluster>.peers   "<node id> <age ms>:<id> …"
//
// on a subject of its own, so a pulse of an earlier version (which parses
// the ping's last word as the node id) is not fed it.
import CLoop
import CNats
import Dispatch
import Foundation
import PulseCore
import PulsePolicy
import Synchronization

final class KVClockPing: @unchecked Sendable {
    let subject: String
    let peersSubject: String
    private let nodeId: String
    private let nc: OpaquePointer
    private let inbox: String
    private let queue = DispatchQueue(label: "pulse.kv.ping")
    private let lastT1 = Atomic<Int64>(0)
    private let stopping = Atomic<Bool>(false)
    private var pingSub: OpaquePointer?
    private var inboxSub: OpaquePointer?
    private var peersSub: OpaquePointer?
    /// Delivery thread → loop: a peers report's text (decoded on the loop).
    private var onReport: (@Sendable (String) -> Void)?
    /// Delivery thread → loop: a pulse pinged us (its id), or answered with a sample.
    private var onSeen: (@Sendable (String) -> Void)?
    private var onSample: (@Sendable (String, SyncSample) -> Void)?
    /// A ping or answer that did not parse (delivery thread: the caller counts it).
    private var onMalformed: (@Sendable () -> Void)?

    /// What reaches the loop from these subjects is budgeted on the delivery
    /// thread: anyone who may publish on `_BACKBEAT.<cluster>.*` could
    /// otherwise post a completion per message — never dropped, a trap past
    /// the loop's 4096 waiting ones, and no per-turn budget, so a flood first
    /// delays the beat, then stops the process (review of 2026-12-07, F2;
    /// KVLeaseProcessTests: 60,000 messages stopped all three pulses). At
    /// most `maxOutstanding` deliveries wait on the loop (the loop calls
    /// `delivered()` as it runs each) and at most `deliveriesPerSecond` are
    /// made (burst `maxOutstanding`); the rest, answers to pings included,
    /// are dropped here and counted (`takeDropped`, reason
    /// `peer_message_dropped`). Seven pulses use ~210 a second.
    static let maxOutstanding: Int64 = 256
    static let deliveriesPerSecond: Int64 = 2_000
    private let outstanding = Atomic<Int64>(0)
    private let dropped = Atomic<UInt64>(0)
    /// (tokens ×1000, last refill in monotonic ns).
    private let budget = Mutex<(milliTokens: Int64, lastNs: Int64)>((KVClockPing.maxOutstanding * 1_000, 0))

    /// Takes one delivery from the budget, or counts a drop.
    private func admit() -> Bool {
        let now = cloop_monotonic_ns()
        let granted = budget.withLock { b -> Bool in
            let elapsedNs = max(0, now &- b.lastNs)
            // deliveriesPerSecond per 1e9 ns, in thousandths of a token; the
            // clock moves on only when it bought some, so messages closer
            // together than that still add up (review kvfix F6).
            let refill = min(elapsedNs, 1_000_000_000) / 1_000 * Self.deliveriesPerSecond / 1_000
            if refill > 0 || elapsedNs >= 1_000_000_000 { b.lastNs = now }
            b.milliTokens = min(Self.maxOutstanding * 1_000, b.milliTokens &+ refill)
            // Checked and taken under the lock: the cap holds exactly (F10).
            guard b.milliTokens >= 1_000, outstanding.load(ordering: .acquiring) < Self.maxOutstanding else {
                return false
            }
            b.milliTokens -= 1_000
            outstanding.add(1, ordering: .acquiringAndReleasing)
            return true
        }
        if !granted { dropped.add(1, ordering: .relaxed) }
        return granted
    }

    /// The loop ran one delivery (call first thing in each handler).
    func delivered() { outstanding.subtract(1, ordering: .acquiringAndReleasing) }

    /// Messages dropped by the budget since the last call (loop thread: counts them).
    func takeDropped() -> UInt64 { dropped.exchange(0, ordering: .relaxed) }

    init(connection: OpaquePointer, clusterId: String, nodeId: String) {
        nc = connection
        subject = "_BACKBEAT.\(clusterId).clock"
        peersSubject = "_BACKBEAT.\(clusterId).peers"
        self.nodeId = nodeId
        inbox = "_INBOX.backbeat.kv.\(UInt64.random(in: 1...UInt64.max))"
    }

    /// Subscribes to the pings and to our inbox. False when it cannot.
    func start(
        seen: @escaping @Sendable (String) -> Void, sample: @escaping @Sendable (String, SyncSample) -> Void,
        report: @escaping @Sendable (String) -> Void, malformed: @escaping @Sendable () -> Void
    ) -> Bool {
        onSeen = seen
        onSample = sample
        onReport = report
        onMalformed = malformed
        let me = Unmanaged.passUnretained(self).toOpaque()
        var ping: OpaquePointer?
        var answers: OpaquePointer?
        var peers: OpaquePointer?
        guard
            natsConnection_Subscribe(
                &ping, nc, subject,
                { _, _, msg, closure in
                    guard let msg, let closure else { return }
                    Unmanaged<KVClockPing>.fromOpaque(closure).takeUnretainedValue().pinged(msg)
                }, me) == NATS_OK,
            natsConnection_Subscribe(
                &answers, nc, inbox,
                { _, _, msg, closure in
                    guard let msg, let closure else { return }
                    Unmanaged<KVClockPing>.fromOpaque(closure).takeUnretainedValue().answered(msg)
                }, me) == NATS_OK,
            natsConnection_Subscribe(
                &peers, nc, peersSubject,
                { _, _, msg, closure in
                    guard let msg, let closure else { return }
                    Unmanaged<KVClockPing>.fromOpaque(closure).takeUnretainedValue().reported(msg)
                }, me) == NATS_OK
        else {
            for sub in [ping, answers].compactMap({ $0 }) { natsSubscription_Destroy(sub) }
            return false
        }
        // libnats keeps at most this much per subscription (its default is
        // 65,536 messages): beyond, it drops them (a slow consumer).
        for sub in [ping, answers, peers].compactMap({ $0 }) {
            _ = natsSubscription_SetPendingLimits(sub, 1_024, 1 << 20)
        }
        pingSub = ping
        inboxSub = answers
        peersSub = peers
        return true
    }

    /// Unsubscribes (before the connection closes).
    func stop() {
        stopping.store(true, ordering: .releasing)
        queue.sync {}
        for sub in [pingSub, inboxSub, peersSub].compactMap({ $0 }) {
            natsSubscription_Unsubscribe(sub)
            natsSubscription_Destroy(sub)
        }
        pingSub = nil
        inboxSub = nil
        peersSub = nil
    }

    /// Pings every other pulse and publishes `report` (the pulses seen,
    /// `KVLeasePeers.encodeReport`) on the peers subject (off the loop: a
    /// publish may wait on the connection's lock).
    func ping(report: String) {
        queue.async { [self] in
            guard !stopping.load(ordering: .acquiring) else { return }
            let t1 = cloop_realtime_ns()
            lastT1.store(t1, ordering: .releasing)
            _ = natsConnection_PublishRequestString(nc, subject, inbox, "\(t1) \(nodeId)")
            _ = natsConnection_PublishString(nc, peersSubject, report)
        }
    }

    // MARK: delivery thread

    private func pinged(_ msg: OpaquePointer) {
        let t2 = cloop_realtime_ns()
        defer { natsMsg_Destroy(msg) }
        let words = Self.words(msg, count: 2)
        guard words.count == 2, let t1 = Int64(words[0]), let reply = natsMsg_GetReply(msg) else {
            if admit() { onMalformed?() }
            return
        }
        let from = words[1]
        guard from != nodeId else { return }  // our own ping, echoed by the server
        guard admit() else { return }  // no answer either: a flood is not reflected
        // An id that breaks the -node-id rule gets no answer; the loop
        // counts it (`KVLeasePeers.seen`: `bad_peer_id`, `long_peer_id`, ...).
        if KVLeasePeers.idProblem(from) == nil {
            let t3 = cloop_realtime_ns()
            _ = natsConnection_PublishString(nc, reply, "\(t1) \(t2) \(t3) \(nodeId)")
        }
        onSeen?(from)
    }

    private func answered(_ msg: OpaquePointer) {
        let t4 = cloop_realtime_ns()
        defer { natsMsg_Destroy(msg) }
        let words = Self.words(msg, count: 4)
        guard words.count == 4, let t1 = Int64(words[0]), let t2 = Int64(words[1]), let t3 = Int64(words[2]) else {
            if admit() { onMalformed?() }
            return
        }
        guard t1 == lastT1.load(ordering: .acquiring) else { return }  // an answer to an older ping
        guard admit() else { return }
        onSample?(words[3], SyncSample(t1: t1, t2: t2, t3: t3, t4: t4))
    }

    private func reported(_ msg: OpaquePointer) {
        defer { natsMsg_Destroy(msg) }
        let length = Int(natsMsg_GetDataLength(msg))
        guard length <= KVLeasePeers.maxReportBytes, let data = natsMsg_GetData(msg),
            let text = String(validating: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
        else {
            if admit() { onMalformed?() }
            return
        }
        guard admit() else { return }
        onReport?(text)
    }

    /// The payload split in at most `count` words (the last one keeps any
    /// spaces: a node id); empty for a payload over 512 bytes or not UTF-8.
    private static func words(_ msg: OpaquePointer, count: Int) -> [String] {
        let length = Int(natsMsg_GetDataLength(msg))
        guard length <= 512, let data = natsMsg_GetData(msg) else { return [] }
        let bytes = UnsafeRawBufferPointer(start: data, count: length)
        guard let text = String(validating: bytes, as: UTF8.self) else { return [] }
        return text.split(separator: " ", maxSplits: count - 1, omittingEmptySubsequences: false).map(String.init)
    }
}
