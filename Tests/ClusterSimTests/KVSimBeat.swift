// KVSimBeat.swift — the nats-kv simulator's beat side (issue 21): every
// pulse runs the service's own `BeatShell` (PulsePolicy/BeatShell.swift and
// BeatPlanner.swift, as Raft mode and SimNode do) over `KVSimBeatPorts`: its
// drifting clocks, a beat timer and a spin on the simulator's event queue at
// their exact times, and a simulated NATS link. The shell is driven by the
// service's `KVShell` (KVSimShell.swift), as KVNode's drives it; frames
// are judged on the bytes handed to the kernel, decoded as a consumer
// decodes them, and reach the other pulses' `BeatShell.hear` / `hearOwn`
// through an `EchoPolicy`, as PulseNode.handleEcho hands them.
//
// The link: a frame handed to the kernel reaches the server 0.05–0.5 ms
// later and each subscriber 0.5–1.5 ms after that. A partition cuts the
// path both ways: the pulse's frames wait in its kernel queue and the
// server holds what it would deliver, both flushed when the cut heals,
// unless the kernel gave up first: TCP_USER_TIMEOUT (NatsLink.userTimeoutMs)
// after the oldest unacknowledged bytes, a frame's or the client's PING
// (NatsLink.pingIntervalMs: one goes out within 500 ms of any cut). Then
// the connection drops with what was queued and reattaches after the cut
// (`natsAttachedMonoNs` moves, which the shell tells the strategy). The
// planner's own drops (`dropConnection`) do the same. Each subscriber gets
// its frames in the order the server sent them (one TCP stream). A stalled pulse (SIGSTOP) runs nothing: its deliveries,
// beat timer and spin wait, in order, until the stall ends.
import Foundation
import PulseCore
import PulsePolicy

@testable import Pulse

/// The simulated ports of one pulse's `BeatShell`.
final class KVSimBeatPorts: BeatPorts {
    unowned let sim: KVSim
    unowned let node: KVSimNode
    init(sim: KVSim, node: KVSimNode) {
        self.sim = sim
        self.node = node
    }

    func nowWallNs() -> Int64 { node.wall(sim.now) }
    func nowMonoNs() -> Int64 { node.mono(sim.now) }
    var natsAttachedMonoNs: Int64? { node.link.attachedMonoNs }

    func armBeat(atWallNs wallNs: Int64, exact: Bool) {
        // A millisecond's lead (the service's adapts between 1 and 2 ms), never in the past.
        sim.armBeat(
            node, atWall: exact ? wallNs : max(wallNs - 1_000_000, node.wall(sim.now) + 1_000_000), exact: exact)
    }

    func spin(untilWallNs target: Int64, beat: Int64, degraded: Bool) -> Int64? {
        let now = node.wall(sim.now)
        guard now < target else { return now }
        // The loop spins until its wall clock reads the target: resumed then.
        sim.events.push(
            max(sim.now + 1, node.trueAt(wall: target)),
            .emit(node: node.index, beat: beat, degraded: degraded, atWall: target))
        return nil
    }

    func publish(_ frame: UnsafeRawBufferPointer, beat: Int64, targetWallNs: Int64, degraded: Bool) -> Bool {
        sim.handToKernel(node, [UInt8](frame), beat: beat, degraded: degraded)
    }

    func dropConnection() { sim.abortLink(node) }
    func note(_ note: BeatNote) {}
    func tempoTookEffect(epoch: TempoEpoch, previousBpm: Int64) {}
}

/// A frame handed to a kernel: its bytes and what they decode to.
struct KVSimFrame {
    let node: Int
    let bytes: [UInt8]
    let decoded: DecodedBeatFrame
    let handoffNs: Int64
}

/// One pulse's NATS connection as its kernel and the server see it.
struct KVSimLink {
    /// Bumped when the connection drops; deliveries of an older one are void.
    var gen = 0
    /// When it (re)attached (the pulse's monotonic ns), nil while down.
    var attachedMonoNs: Int64?
    /// Frames handed to the kernel while the path is cut.
    var kernelQueue: [KVSimFrame] = []
    /// Frames the server holds for this subscriber while the path is cut.
    var serverQueue: [KVSimFrame] = []
    /// When the server last sent it a frame, and it the server (one TCP stream each way).
    var lastDeliveryNs: Int64 = 0
    var lastSentNs: Int64 = 0
}

/// The beat side's events, between the 5 ms steps, at their exact times.
enum KVSimEvent {
    case beat(node: Int, timer: Int)
    case emit(node: Int, beat: Int64, degraded: Bool, atWall: Int64)
    case serverReceives(KVSimFrame)
    case deliver(node: Int, link: Int, KVSimFrame)
    case userTimeout(node: Int, link: Int)
    /// The client's PING, sent into a cut path, unanswered for TCP_USER_TIMEOUT.
    case pingTimeout(node: Int, link: Int)
    case reconnect(node: Int, link: Int)
    case stallEnds(node: Int)
    case partitionEnds(node: Int)
}

extension KVSim {
    /// TCP_USER_TIMEOUT of the NATS socket (the service's).
    static let userTimeoutNs: Int64 = NatsLink.userTimeoutMs * 1_000_000

    /// SIM_TRACE=1 with SIM_SEED: what the beat side does, as it happens.
    static let tracing = ProcessInfo.processInfo.environment["SIM_TRACE"] != nil
    func trace(_ s: @autoclosure () -> String) {
        if Self.tracing { print(String(format: "%9.4f ", Double(now) / 1e9) + s()) }
    }

    func cut(_ n: KVSimNode) -> Bool { now < n.partitionedUntilNs }

    /// Runs the events due at or before true time `t`, in time order.
    func runEvents(through t: Int64) {
        while let at = events.nextTime, at <= t, let (when, event) = events.pop() {
            now = when
            handle(event)
        }
    }

    func handle(_ event: KVSimEvent) {
        switch event {
        case .beat(let i, let timer):
            let n = nodes[i]
            guard !n.gone, n.beatTimer == timer else { return }
            if n.stalled(now) { n.beatPending = true } else { wakeBeat(n) }
        case .emit(let i, let k, let degraded, let at):
            let n = nodes[i]
            guard !n.gone else { return }
            if n.stalled(now) {
                n.emitPending = (k, degraded, at)
            } else {
                n.beat.resume(beat: k, degraded: degraded, targetWallNs: at)
            }
        case .serverReceives(let f): serverReceives(f)
        case .deliver(let i, let link, let f):
            let n = nodes[i]
            guard !n.gone, n.link.gen == link, n.link.attachedMonoNs != nil else { return }
            if n.stalled(now) { n.backlog.append(f) } else { hear(n, f) }
        case .userTimeout(let i, let link):
            let n = nodes[i]
            guard n.link.gen == link, let oldest = n.link.kernelQueue.first else { return }
            if now - oldest.handoffNs >= Self.userTimeoutNs { abortLink(n) }
        case .pingTimeout(let i, let link):
            let n = nodes[i]
            if n.link.gen == link && n.link.attachedMonoNs != nil && cut(n) { abortLink(n) }
        case .reconnect(let i, let link):
            let n = nodes[i]
            guard !n.gone, n.link.gen == link, n.link.attachedMonoNs == nil else { return }
            if cut(n) {
                events.push(now + 200_000_000, .reconnect(node: i, link: link))
                return
            }
            n.link.attachedMonoNs = n.mono(now)
            n.link.lastSentNs = now
            n.link.lastDeliveryNs = now
        case .stallEnds(let i):
            let n = nodes[i]
            guard !n.gone, !n.stalled(now) else { return }
            // The loop runs again: the socket first, then the expired timers.
            let backlog = n.backlog
            n.backlog = []
            for f in backlog where !n.gone { hear(n, f) }
            if n.beatPending && !n.gone {
                n.beatPending = false
                wakeBeat(n)
            }
            if let (k, d, at) = n.emitPending, !n.gone {
                n.emitPending = nil
                n.beat.resume(beat: k, degraded: d, targetWallNs: at)
            }
        case .partitionEnds(let i):
            let n = nodes[i]
            guard !n.gone, !cut(n), n.link.attachedMonoNs != nil else { return }
            for f in n.link.kernelQueue { send(n, f) }
            for f in n.link.serverQueue { deliver(f, to: n) }
            n.link.kernelQueue = []
            n.link.serverQueue = []
        }
    }

    // MARK: the beat timer

    func armBeat(_ n: KVSimNode, atWall w: Int64, exact: Bool) {
        n.beatTimer += 1
        events.push(max(now + 1, n.trueAt(wall: w)), .beat(node: n.index, timer: n.beatTimer))
        // A degraded turn retried by the planner: only the tempo barrier
        // retries one (BeatPlanner.slotDecision); `.waiting` is a holder's.
        let l = n.leadership
        if exact, l.degraded, !l.lease.mayPublish(nowMonoNs: n.mono(now)), n.beat.nextBeat >= l.tempoBarrierBeat {
            degradedHeld += 1
        }
    }

    /// The beat timer fired: the service's beat shell plans and acts (BeatDriver's order).
    func wakeBeat(_ n: KVSimNode) {
        n.beat.wake()
        n.beat.prepareAhead()
        trace(
            "n\(n.index) wake next=\(n.beat.nextBeat) seen=\(n.beat.lastSeenIndex) degraded=\(n.leadership.degraded) holder=\(n.leadership.isHolder)"
        )
    }

    // MARK: NATS

    /// The shell writes beat `k`'s encoded frame: judged as it reaches the
    /// kernel, then queued behind a cut path or on its way to the server.
    func handToKernel(_ n: KVSimNode, _ bytes: [UInt8], beat k: Int64, degraded: Bool) -> Bool {
        guard n.link.attachedMonoNs != nil else { return false }
        // What the bytes say is what the invariants judge, not what the node meant to write.
        guard case .success(let d) = BeatFrameDecoder.result(bytes), d.beatIndex == k, d.degraded == degraded else {
            violations.append("frame_bytes: node \(n.index) encoded beat \(k) as bytes that do not decode to it")
            return false
        }
        let f = KVSimFrame(node: n.index, bytes: bytes, decoded: d, handoffNs: now)
        trace(
            "n\(n.index) hands off beat \(k) term \(d.term)\(degraded ? " degraded" : "") \(d.tempoBpm) bpm wall \(Double(n.wall(now)) / 1e6) ms\(cut(n) ? " (cut)" : "")"
        )
        checkHandoff(n, f)
        if cut(n) {
            n.link.kernelQueue.append(f)
            if n.link.kernelQueue.count == 1 {
                events.push(now + Self.userTimeoutNs, .userTimeout(node: n.index, link: n.link.gen))
            }
        } else {
            send(n, f)
        }
        return true
    }

    /// A frame on its way from pulse `n` to the server, behind its earlier ones.
    func send(_ n: KVSimNode, _ f: KVSimFrame) {
        n.link.lastSentNs = max(now + netRng.range(50_000, 500_000), n.link.lastSentNs + 1)
        events.push(n.link.lastSentNs, .serverReceives(f))
    }

    /// A frame on its way from the server to subscriber `s`, behind its earlier ones.
    func deliver(_ f: KVSimFrame, to s: KVSimNode) {
        s.link.lastDeliveryNs = max(now + netRng.range(500_000, 1_500_000), s.link.lastDeliveryNs + 1)
        events.push(s.link.lastDeliveryNs, .deliver(node: s.index, link: s.link.gen, f))
    }

    /// A cut began: the client's next PING (within a ping interval) goes
    /// unanswered, and the kernel drops the connection TCP_USER_TIMEOUT
    /// later if the path is still cut.
    func pathCut(_ n: KVSimNode) {
        guard n.link.attachedMonoNs != nil else { return }
        let ping = now + netRng.range(0, Int64(NatsLink.pingIntervalMs) * 1_000_000)
        events.push(ping + Self.userTimeoutNs, .pingTimeout(node: n.index, link: n.link.gen))
    }

    /// The server forwards a frame to every subscriber (read in `hear`).
    func serverReceives(_ f: KVSimFrame) {
        for j in nodes.indices where !nodes[j].gone && nodes[j].link.attachedMonoNs != nil {
            let s = nodes[j]
            if cut(s) {
                s.link.serverQueue.append(f)
            } else {
                deliver(f, to: s)
            }
        }
    }

    func abortLink(_ n: KVSimNode) {
        n.link.gen += 1
        n.link.attachedMonoNs = nil
        n.link.kernelQueue = []
        n.link.serverQueue = []
        events.push(now + netRng.range(100_000_000, 500_000_000), .reconnect(node: n.index, link: n.link.gen))
    }

    /// A frame read from the beat subject: PulseNode.handleEcho's path (its
    /// own last frame by its bytes, else the decoded frame), then its
    /// hand-over once its last frame came back.
    func hear(_ n: KVSimNode, _ f: KVSimFrame) {
        let wall = n.wall(now)
        heard[f.decoded.beatIndex, default: []].insert(n.index)
        if let own = f.bytes.withUnsafeBytes({ n.beat.hearOwn($0, wallNs: wall, policy: &n.echo) }) {
            if case .reject = own.verdict {
                refusedEchoes += 1
            } else if n.handOverPending && own.index >= n.beat.lastPublishedIndex {
                handOver(n, echoed: true)
            }
            return
        }
        let foreignBefore = n.beat.lastForeignFrameWallNs
        guard let verdict = n.beat.hear(f.decoded, wallNs: wall, policy: &n.echo) else { return }
        if n.beat.lastForeignFrameWallNs != foreignBefore { foreignFrames += 1 }
        trace("n\(n.index) hears beat \(f.decoded.beatIndex) of n\(f.node): \(verdict)")
        if case .reject = verdict {
            refusedEchoes += 1
            return
        }
        if n.handOverPending && f.decoded.hlcSuffix == n.beat.ownSuffix
            && f.decoded.beatIndex >= n.beat.lastPublishedIndex
        {
            handOver(n, echoed: true)
        }
    }

    // MARK: the invariants on what reaches the kernel

    func checkHandoff(_ n: KVSimNode, _ f: KVSimFrame) {
        let i = n.index
        let d = f.decoded
        let k = d.beatIndex
        if d.degraded {
            // Degraded: a duplicate of a frame this pulse had read, or of
            // another degraded pulse's frame when both went out on an open
            // path (turns must keep such pulses apart, read or not: the
            // whole-cluster simulator's rule).
            let open = !cut(n)
            let first =
                published[k].map { "the holder of term \($0.term)" } ?? degradedPublished[k].map { "node \($0)" }
            let bothOpen = published[k] == nil && open && !openDegraded[k, default: []].isEmpty
            if let first, heard[k, default: []].contains(i) || bothOpen {
                violations.append("no_republish: degraded beat \(k) by node \(i), first by \(first)")
            } else if first != nil {
                unheardDuplicates += 1
            }
            if degradedPublished[k] == nil { degradedPublished[k] = i }
            if open { openDegraded[k, default: []].insert(i) }
            return
        }
        let owner = n.leadership.lease.owner
        server.expire(atNs: now)
        if server.lease?.term != d.term || server.lease?.owner != owner {
            violations.append(
                "holder_is_current: beat \(k) by node \(i) term \(d.term), server holds \(String(describing: server.lease))"
            )
        }
        if let old = published[k] {
            violations.append("no_republish: beat \(k) by node \(i) term \(d.term), first term \(old.term)")
        }
        if let other = degradedPublished[k] {
            if heard[k, default: []].contains(i) {
                violations.append(
                    "no_republish: beat \(k) by node \(i) term \(d.term), first degraded by node \(other)")
            } else {
                unheardDuplicates += 1
            }
        }
        if let previous = published.filter({ $0.key < k }).max(by: { $0.key < $1.key }), previous.value.term > d.term {
            violations.append("term_order: beat \(k) term \(d.term) after term \(previous.value.term)")
        }
        if let p = committedPending, k >= p.atBeat, d.tempoBpm != p.bpm {
            violations.append(
                "not_retroactive: beat \(k) at \(d.tempoBpm) bpm after the change to \(p.bpm) at \(p.atBeat)")
        }
        // Lateness (§2): at or after the instant, less than half a period late.
        if let t = n.leadership.committedTimeline {
            let late = n.wall(now) - t.instantNs(ofBeat: k)
            let period = t.instantNs(ofBeat: k + 1) - t.instantNs(ofBeat: k)
            if late < 0 || late >= period / 2 {
                violations.append("lateness: beat \(k) by node \(i) \(Double(late) / 1e6) ms after its instant")
            }
        }
        checkOnTimeline(n, d)
        lastHolderFrameNs[d.term] = now
        published[k] = (d.term, i, d.tempoBpm)
    }

    /// on_timeline: a holder's frame says what the committed timeline (the
    /// record the server stores) says of its index: the tempo and the
    /// deadline. monotonic: deadlines strictly increase with the index
    /// across every holder's frames (a re-sync may not move time back).
    func checkOnTimeline(_ n: KVSimNode, _ d: DecodedBeatFrame) {
        let k = d.beatIndex
        if let stored = server.timeline {
            var committed = KVLeaseTimeline(flags: shape)
            _ = committed.apply(stored.value, revision: stored.rev)
            if let t = committed.machine.timeline, k >= t.epoch.startBeat {
                var at = t
                _ = at.applyDue(beat: k)
                if at.epoch.bpm != d.tempoBpm || t.deadlineUnixMs(ofBeat: k) != d.deadlineUnixMs {
                    violations.append(
                        "on_timeline: beat \(k) by node \(n.index) at \(d.tempoBpm) bpm, deadline \(d.deadlineUnixMs); committed \(at.epoch.bpm) bpm, \(t.deadlineUnixMs(ofBeat: k))"
                    )
                }
            }
        }
        let below = publishedDeadlines.filter { $0.key < k }.max { $0.key < $1.key }
        let above = publishedDeadlines.filter { $0.key > k }.min { $0.key < $1.key }
        if let b = below, b.value >= d.deadlineUnixMs {
            violations.append("monotonic: beat \(k) deadline \(d.deadlineUnixMs) not after beat \(b.key)'s \(b.value)")
        }
        if let a = above, a.value <= d.deadlineUnixMs {
            violations.append("monotonic: beat \(k) deadline \(d.deadlineUnixMs) not before beat \(a.key)'s \(a.value)")
        }
        publishedDeadlines[k] = d.deadlineUnixMs
    }
}
