// Simulation.swift — the event loop of the whole-cluster simulator and its
// invariants (see ClusterSim.swift for the model).
import Foundation
import Logging
import PulseCore
import PulsePolicy
import Raft

@testable import Pulse

final class Simulation {
    let seed: UInt64
    var rng: SimRNG
    /// The random stream of faults added after the first seeds were recorded.
    var laterRng: SimRNG
    var knobs: SimKnobs
    var nodes: [SimNode] = []
    var events = EventQueue<SimEvent>()
    var now: Int64 = 0
    var steps = 0
    var chaosOn = true
    var endNs: Int64 { knobs.chaosNs + knobs.settleNs }
    let tickNs: Int64 = 50_000_000
    let electionTicks = 6
    let commitRoundNs: Int64 = 200_000_000
    /// `SIM_COMPACT_EVERY`: every run compacts every this many applied
    /// entries (else each seed draws 2, 4 or 16: `SimKnobs.compactEvery`).
    static let compactEveryOverride: UInt64? =
        ProcessInfo.processInfo.environment["SIM_COMPACT_EVERY"].flatMap { UInt64($0) }
    /// The simulated cluster's id (in every frame).
    static let clusterId = "sim"
    /// Wall time (Unix ns) at true time 0.
    static let wallBase: Int64 = 1_700_000_000_000_000_000
    /// Raft partition: a group per node.
    var raftGroup: [Int]
    /// Single Raft links cut (both directions), as `a * 64 + b` with a < b.
    var cutLinks = Set<Int>()
    /// Scripted steps of a targeted scenario: (true time, action).
    var script: [(Int64, (Simulation) -> Void)] = []
    /// NATS partition: nodes whose path to the server is cut.
    var natsCut: [Bool]

    // Global knowledge for the invariants.
    var exercised: [Invariant: Int] = [:]
    var violation: SimViolation?
    /// True time each term's leader started leading (from its own Ready).
    var leaderSince: [UInt64: Int64] = [:]
    var maxLeaderTerm: UInt64 = 0
    var maxLeaderTermAt: Int64 = 0
    var oracle: ReplicatedTimeline
    var oracleIndex: UInt64 = 0
    var oracleCommands: [UInt64: AppliedCommand] = [:]
    /// Every frame handed to the kernel, for the retroactivity check.
    var handedOff: [SimFrame] = []
    /// The consumer's view: frames in subject order.
    var received: [SimFrame] = []
    var nonDegradedByIndex: [Int64: SimFrame] = [:]
    var connectedByIndex: [Int64: [SimFrame]] = [:]
    var maxTermOnSubject: UInt64 = 0
    var refusedRequests: Set<UInt64> = []
    var appliedRequests: Set<UInt64> = []
    var nextRequest: UInt64 = 1
    /// How many times each tempo request was answered (exactly once, unless its shell crashed).
    var answers: [UInt64: Int] = [:]
    /// The highest commit index a second before the end: every node must have applied it.
    var commitMark: UInt64 = 0
    /// Frames handed off while their publisher's path to the server was open.
    var openAtHandoff: Set<String> = []
    /// Membership runs (SimMembership.swift): their own random stream, the
    /// planner configuration of new nodes, and the committed configurations.
    var memberRng: SimRNG
    let plannerConfig: PlannerConfig
    /// Every node's -bar (and one phase).
    let shape: TimelineShape
    var membership: MembershipState
    /// Crashes, restarts from the simulated disk, store calls a crash
    /// interrupted, and starts refused on a disk damaged beyond the store's promise.
    var crashes = 0
    var restarts = 0
    var tornWrites = 0
    var refusedStarts = 0
    /// The disk faults' own random stream (added with the simulated disk:
    /// earlier seeds draw everything else as before).
    var diskRng: SimRNG
    /// Crashes in the middle of a compaction (their own stream, added later).
    var compactionRng: SimRNG
    var compactionCrashes = 0
    var compactions = 0
    /// Snapshots installed from a leader (a Ready that carries one), and
    /// restarts of a node that installed one in its previous incarnation.
    var installs = 0
    var installRestarts = 0
    /// Scripted crashes between an installed snapshot's write and the log's rewrite.
    var installCrashes = 0
    /// Of those, crashes that left log entries past the snapshot on disk.
    var staleTailsAtInstallCrash = 0

    init(seed: UInt64, knobs: SimKnobs? = nil, membership: Bool = false, tracing: ShellTrace? = nil) {
        self.seed = seed
        var rng = SimRNG(seed: seed)
        var k = knobs ?? SimKnobs.random(&rng, seed: seed)
        // A share of the random runs is a single node (one voter), from its
        // own stream; membership runs replace voters of three or five.
        if knobs == nil && !membership { k.maybeAlone(seed: seed) }
        memberRng = SimRNG(seed: seed ^ 0x3E3B_E125)
        diskRng = SimRNG(seed: seed ^ 0xD15C_F11E)
        compactionRng = SimRNG(seed: seed ^ 0xC0_4AC7)
        if membership {
            k.membership = true
            // A node lost for good to a damaged disk, on top of replacements, is
            // more than the membership runs' fault budget (a voter set of three
            // with one being replaced and one gone has no quorum).
            k.diskDamage = false
            k.replaceRate = memberRng.pick([0.3, 0.6, 1.0])
        }
        self.knobs = k
        self.rng = rng
        laterRng = SimRNG(seed: seed ^ 0x5EED_1A7E)
        raftGroup = Array(repeating: 0, count: k.nodes)
        natsCut = Array(repeating: false, count: k.nodes)
        oracle = ReplicatedTimeline(bar: k.bar)
        shape = oracle.flags
        let guardNs = k.maxOffsetNs + k.staleBytesBoundNs + k.natsMaxDelayNs
        let pc = PlannerConfig(maxLeadNs: 2_000_000, handoffGuardNs: guardNs, retryNs: 2_000_000)
        plannerConfig = pc
        self.membership = MembershipState(voters: (0..<k.nodes).map { NodeID($0 + 1) })
        let wallBase = Self.wallBase
        let halfOffset = k.maxOffsetNs / 2 - 1_000_000
        for i in 0..<k.nodes {
            let ppb = self.rng.range(-k.ppmMax * 1000, k.ppmMax * 1000)
            let monoBase = self.rng.range(1_000_000_000_000, 2_000_000_000_000)
            let offset = self.rng.range(-min(k.offsetMaxNs, halfOffset), min(k.offsetMaxNs, halfOffset))
            let clock = NodeClock(ppb: ppb, monoBase: monoBase, wallOffsetNs: wallBase - monoBase + offset)
            nodes.append(SimNode(index: i, clock: clock, planner: pc, diskSeed: seed ^ UInt64(i) << 40))
        }
        for n in nodes { n.bootVoters = nodes.map(\.id) }
        nodes[0].trace = tracing
        for n in nodes { boot(n) }
        if k.membership { at(100_000_000, always: true) { $0.membershipTick() } }
        at(endNs - 1_000_000_000, always: true) { s in
            s.commitMark = s.nodes.map { $0.core.raft.commitIndex }.max() ?? 0
        }
        events.push(100_000_000, .chaos)
        events.push(k.chaosNs, .endChaos)
    }

    // MARK: running

    func run() -> SimViolation? {
        while violation == nil, let (at, event) = events.pop(), at <= endNs {
            now = at
            steps += 1
            handle(event)
        }
        if violation == nil { finalChecks() }
        return violation
    }

    /// SIM_TRACE=1 with SIM_SEED: print frames and leadership as they happen.
    static let tracing = ProcessInfo.processInfo.environment["SIM_TRACE"] != nil
    func trace(_ s: @autoclosure () -> String) {
        if Self.tracing { print(String(format: "%9.4f ", Double(now) / 1e9) + s()) }
    }

    func fail(_ inv: Invariant, _ what: String) {
        if violation == nil {
            violation = SimViolation(seed: seed, atNs: now, invariant: inv, what: what, membership: knobs.membership)
        }
    }

    func count(_ inv: Invariant) { exercised[inv, default: 0] += 1 }

    func wall(_ n: SimNode) -> Int64 { n.clock.wall(atTrue: now) }
    func mono(_ n: SimNode) -> Int64 { n.clock.mono(atTrue: now) }

    func handle(_ event: SimEvent) {
        switch event {
        case .chaos: chaos()
        case .script(let i): script[i].1(self)
        case .endChaos: endChaos()
        case .restart(let i): restart(nodes[i])
        case .tick(let i, let gen):
            let n = nodes[i]
            guard n.up, n.gen == gen else { return }
            if n.stalled(now) { n.tickPending = true } else { onTick(n) }
        case .beat(let i, let gen, let timer):
            let n = nodes[i]
            guard n.up, n.gen == gen, n.beatTimer == timer else { return }
            if n.stalled(now) { n.beatPending = true } else { wakeBeat(n) }
        case .emit(let i, let gen, let k, let degraded, let at):
            let n = nodes[i]
            guard n.up, n.gen == gen else { return }
            if n.stalled(now) {
                n.emitPending = (k, degraded, at)
            } else {
                n.beat.resume(beat: k, degraded: degraded, targetWallNs: at)
            }
        case .raft(let m, let stamp):
            let n = nodes[Int(m.to) - 1]
            guard n.up else { return }
            if n.stalled(now) { n.socketBacklog.append((m, stamp)) } else { onRaft(n, m, stamp) }
        case .storeDone(let i, let gen):
            let n = nodes[i]
            guard n.up, n.gen == gen, let rd = n.savingReady else { return }
            if n.crashDuringSave {
                crash(n)
                return
            }
            if rd.snapshot != nil {
                installs += 1
                n.installedSinceBoot = true
                if n.crashAfterInstallWrite {
                    crashAfterSnapshotWrite(n, rd)
                    return
                }
            }
            // Durable now (the store thread runs during a stall).
            do {
                try n.store.persist(hardState: rd.hardState, snapshot: rd.snapshot, entries: rd.entries)
            } catch {
                fail(.restartable, "node \(n.id): the store failed without a crash: \(error)")
                return
            }
            post(n, .completion)
        case .natsUp(_, _, let frame): serverReceives(frame)
        case .natsDown(let i, let link, let frame):
            let n = nodes[i]
            guard n.up, n.link.gen == link, n.link.connected else { return }
            post(n, .nats(frame))
        case .userTimeout(let i, let link):
            let n = nodes[i]
            guard n.up, n.link.gen == link, let oldest = n.link.kernelQueue.first else { return }
            if now - oldest.handoffNs >= knobs.staleBytesBoundNs { abortLink(n) }
        case .reconnect(let i, let link):
            let n = nodes[i]
            guard n.up, n.link.gen == link, !n.link.connected else { return }
            if natsCut[i] {
                events.push(now + 200_000_000, .reconnect(node: i, link: link))
                return
            }
            n.link.connected = true
            n.link.attachedMonoNs = mono(n)
        case .wake(let i, let gen):
            let n = nodes[i]
            guard n.up, n.gen == gen, !n.stalled(now) else { return }
            resume(n)
        }
    }

    // MARK: node lifecycle

    func boot(_ n: SimNode) {
        n.sim = self
        n.up = true
        n.gen += 1
        n.clock.trueNs = now
        guard let core = startFromDisk(n) else {
            n.up = false
            return
        }
        n.core = core
        // The service's beat side, reading the committed timeline from the core.
        n.beat = BeatShell(
            ports: n.beatPorts, planner: plannerConfig, handOverGuardNs: plannerConfig.handoffGuardNs,
            clusterId: Self.clusterId, phases: shape.phases, nodeId: n.nodeName,
            maxOffsetMs: knobs.maxOffsetNs / 1_000_000)
        n.beat.core = core
        n.echo = EchoPolicy(clusterId: Self.clusterId, publishers: .any, maxTermLead: EchoPolicy.clusterTermLead)
        n.savingReady = nil
        n.saveDone = nil
        n.tempoInFlight = false
        n.doorway = []
        n.completionPosted = false
        n.socketBacklog = []
        n.tickPending = false
        n.beatPending = false
        n.emitPending = nil
        n.stalledUntil = 0
        n.lastFrom = [:]
        n.link.gen += 1
        n.link.connected = false
        n.link.kernelQueue = []
        n.link.serverQueue = []
        events.push(now + rng.range(5_000_000, 100_000_000), .reconnect(node: n.index, link: n.link.gen))
        events.push(now + tickNs, .tick(node: n.index, gen: n.gen))
        n.shell = ClusterShell(core: core, ports: n.ports)
        // As ClusterNode.start: ticks from now, a lone voter campaigns at
        // once; the persisted snapshot's `.restored` starts the beat shell.
        n.trace?.inputs.append(.start)
        n.shell.start()
    }

    /// The node's core from what its disk holds, through the service's
    /// store (`RaftStore.load` validates every file, cuts a torn tail);
    /// nil when the start is refused, which only a disk damaged beyond the
    /// store's promise may cause (else a `restart_from_disk` violation).
    func startFromDisk(_ n: SimNode) -> ClusterCore? {
        defer { n.installedSinceBoot = false }
        n.files.restart()
        n.store = RaftStore(files: n.files)
        do {
            let coreSeed = seed &* 31 &+ UInt64(n.index) &+ UInt64(n.gen)
            let monoNs = mono(n)
            n.trace?.start = (coreSeed, monoNs, n.bootVoters, timing(), knobs.bpm, knobs.bar)
            // The service's own start-up path (ClusterNode.init): load, shape check, core.
            let (core, persisted) = try ClusterNode.coreFromDisk(
                store: n.store, id: n.id, voters: n.bootVoters, timing: timing(), seed: coreSeed, nowMonoNs: monoNs,
                shape: shape, bootstrapBpm: knobs.bpm, dataDir: "sim-disk", logger: Self.quietLogger)
            if n.files.damaged {
                fail(.restartable, "node \(n.id) started on a log damaged beyond the store's promise")
            }
            checkAcknowledged(n, persisted)
            return core
        } catch {
            if n.files.damaged && "\(error)".contains("raft/log at byte offset") {
                refusedStarts += 1
                trace("n\(n.id): start refused on a damaged disk: \(error)")
            } else {
                fail(
                    n.installedSinceBoot ? .installRestart : .restartable,
                    "node \(n.id) refused to start from its disk after a crash: \(error)")
            }
            return nil
        }
    }

    /// The start-up path's logger (torn tails are the simulator's routine).
    static let quietLogger = Logger(label: "sim", factory: { _ in SwiftLogNoOpLogHandler() })

    func timing() -> ClusterTiming {
        var t = ClusterTiming()
        t.tickNs = tickNs
        t.electionTicks = electionTicks
        t.compactEvery = Self.compactEveryOverride ?? knobs.compactEvery

        return t
    }

    func crash(_ n: SimNode) {
        n.crashDuringSave = false
        crashes += 1
        if n.savingReady?.snapshot != nil { n.installedSinceBoot = true }
        if let rd = n.savingReady, diskRng.chance(0.8) {
            // The crash hits while the store thread writes this Ready: some of
            // its calls complete, the next one is torn or lost.
            n.files.armCrash(afterCalls: Int(diskRng.range(0, 3)))
            do {
                try n.store.persist(hardState: rd.hardState, snapshot: rd.snapshot, entries: rd.entries)
            } catch {
                tornWrites += 1
            }
        }
        n.files.armCrash(afterCalls: 0)  // nothing more reaches the disk
        // At most one node a run is lost to a damaged disk (SimKnobs.diskDamage):
        // a second one crashing before the first's start was refused would take
        // a majority of three for good (seeds 16518, 19070, 29343).
        if knobs.diskDamage && refusedStarts == 0 && diskRng.chance(0.2) && !nodes.contains(where: \.files.damaged) {
            n.files.damage()
        }
        n.up = false
        n.gen += 1
        n.link.gen += 1
        n.link.connected = false
        n.link.kernelQueue = []  // the kernel resets the socket: queued bytes are gone
        n.link.serverQueue = []
        let latest = chaosOn ? knobs.chaosNs + 1_000_000_000 : now + 1_000_000_000
        events.push(min(now + rng.range(300_000_000, 3_000_000_000), latest), .restart(node: n.index))
    }

    /// Scripted (`crashAfterInstallWrite`): the store thread writes an
    /// installed snapshot, and the process dies before the log's rewrite
    /// (the stale tail of the log it replaced is still on disk).
    func crashAfterSnapshotWrite(_ n: SimNode, _ rd: Ready) {
        n.crashAfterInstallWrite = false
        n.files.crashAfterReplacing("snapshot")
        do {
            try n.store.persist(hardState: rd.hardState, snapshot: rd.snapshot, entries: rd.entries)
            fail(.installRestart, "node \(n.id): the armed crash after the snapshot's write never came")
        } catch {
            installCrashes += 1
        }
        // What the next start will find: log entries past the snapshot that
        // it replaced (the tail the core dropped; the store had not yet).
        let log = (try? RaftStore.scanLog(n.files.durable["log"] ?? []))?.entries ?? []
        if let snapshot = rd.snapshot, log.contains(where: { $0.index > snapshot.index }) {
            staleTailsAtInstallCrash += 1
        }
        n.savingReady = nil
        n.saveDone = nil
        crash(n)
    }

    func restart(_ n: SimNode) {
        guard !n.up, !membership.retired.contains(n.index) else { return }
        restarts += 1
        count(.restartable)
        if n.installedSinceBoot {
            installRestarts += 1
            count(.installRestart)
        }
        boot(n)
        if n.up && knobs.nodes == 1 { expectResumed(n) }
    }

    func resume(_ n: SimNode) {
        // The loop runs again: sockets first (as epoll reports them), then the
        // doorway, then the timers that expired meanwhile.
        let backlog = n.socketBacklog
        n.socketBacklog = []
        for (m, s) in backlog where n.up && !n.stalled(now) { onRaft(n, m, s) }
        drain(n)
        if n.tickPending {
            n.tickPending = false
            onTick(n)
        }
        if n.beatPending {
            n.beatPending = false
            wakeBeat(n)
        }
        if let (k, d, at) = n.emitPending {
            n.emitPending = nil
            n.beat.resume(beat: k, degraded: d, targetWallNs: at)
        }
    }

    // MARK: Raft

    func onTick(_ n: SimNode) {
        n.trace?.inputs.append(.tick)
        n.shell.tick()
        // The next tick at the next multiple of tickNs on the node's monotonic clock.
        let next = n.core.ticks.lastTickMonoNs + tickNs
        events.push(max(now + 1, n.clock.trueAt(mono: next)), .tick(node: n.index, gen: n.gen))
    }

    func onRaft(_ n: SimNode, _ m: Message, _ s: Stamp) {
        let t4 = wall(n)
        var sample: SyncSample?
        if let t1 = s.echoSendNs, let t2 = s.echoRecvNs {
            sample = SyncSample(t1: t1, t2: t2, t3: s.sendWallNs, t4: t4)
        }
        n.lastFrom[m.from] = (s.sendWallNs, t4)
        if m.kind != .heartbeat && m.kind != .heartbeatResponse {
            trace(
                "n\(n.id) <- n\(m.from): \(m.kind) term \(m.term)\(m.reject ? " reject" : "") (n\(n.id) term \(n.core.raft.term) \(n.core.raft.role))"
            )
        }
        n.trace?.inputs.append(.receive(m, sample, s.sendWallNs))
        n.shell.receive(m, clockSample: sample, peerWallNs: s.sendWallNs)
    }

    /// The store thread takes `rd` (SimPorts.persist): it is durable once
    /// `.storeDone` comes, and the completion then waits for the loop.
    func startSave(_ n: SimNode, _ rd: Ready, done: @escaping (Error?) -> Void) {
        precondition(n.savingReady == nil, "two Readies in flight")
        n.savingReady = rd
        n.saveDone = done
        events.push(
            now + (n.storeFixedNs ?? rng.range(300_000, knobs.storeMaxNs)), .storeDone(node: n.index, gen: n.gen))
    }

    func send(_ n: SimNode, _ m: Message) {
        noteAcknowledged(n, m)
        let to = Int(m.to) - 1
        let echo = n.lastFrom[m.to]
        let stamp = Stamp(sendWallNs: wall(n), echoSendNs: echo?.theirSend, echoRecvNs: echo?.myRecv)
        let copies = chaosOn && rng.chance(knobs.raftDup) ? 2 : 1
        for _ in 0..<copies {
            guard raftGroup[n.index] == raftGroup[to], !cutLinks.contains(linkKey(n.index, to)),
                !(chaosOn && rng.chance(knobs.raftDrop))
            else { continue }
            events.push(now + rng.range(100_000, knobs.raftMaxDelayNs), .raft(m, stamp: stamp))
        }
    }

    /// Records what `m` tells its receiver this node holds durably.
    func noteAcknowledged(_ n: SimNode, _ m: Message) {
        guard m.kind != .preVote && m.kind != .preVoteResponse else { return }  // a future term, never persisted
        n.maxSentTerm = max(n.maxSentTerm, m.term)
        if m.kind == .voteResponse && !m.reject { n.votedFor[m.term] = m.to }
        if m.kind == .appendResponse && !m.reject { n.ackedIndex[m.term] = max(n.ackedIndex[m.term] ?? 0, m.index) }
    }

    /// At a restart from an undamaged disk: everything acknowledged is there.
    func checkAcknowledged(_ n: SimNode, _ p: RaftPersisted) {
        count(.ackedDurable)
        let hs = p.hardState
        let last = max(p.snapshot?.index ?? 0, p.entries.last?.index ?? 0)
        if hs.term < n.maxSentTerm {
            fail(.ackedDurable, "node \(n.id) restarted in term \(hs.term) after sending term \(n.maxSentTerm)")
        } else if let v = n.votedFor[hs.term], hs.vote != v {
            fail(.ackedDurable, "node \(n.id) voted for \(v) in term \(hs.term) and restarted with vote \(hs.vote)")
        } else if let acked = n.ackedIndex[hs.term], last < acked {
            fail(.ackedDurable, "node \(n.id) acknowledged entry \(acked) in term \(hs.term), restarted with \(last)")
        }
    }

    func linkKey(_ a: Int, _ b: Int) -> Int { min(a, b) * 64 + max(a, b) }

    /// Adds a scripted step at true time `at` (a fault: ignored once the
    /// chaos phase is over, unless `always`).
    func at(_ at: Int64, always: Bool = false, _ action: @escaping (Simulation) -> Void) {
        script.append((at, { s in if always || s.chaosOn { action(s) } }))
        events.push(at, .script(script.count - 1))
    }

    /// The node that leads (and holds a lease) now, if any.
    var leader: SimNode? { nodes.first { $0.up && $0.core.isLeader } }

    /// Stalls node `n` (its loop thread) for `ns`.
    func stall(_ n: SimNode, ns: Int64) {
        n.stalledUntil = now + ns
        n.disturbedUntilNs = max(n.disturbedUntilNs, now + ns)
        events.push(now + ns, .wake(node: n.index, gen: n.gen))
    }

    func clusterEvent(_ n: SimNode, _ e: ClusterEvent) {
        // The beat side reacts first, as in the service (PulseNode.clusterEvent).
        n.beat.clusterEvent(e)
        if n.beat.retroactiveTempoChanges > 0 {
            fail(.tempoNotRetroactive, "node \(n.id) applied a committed tempo change at a beat it had published")
        }
        switch e {
        case .leadership(let role, let leader, let term):
            trace("n\(n.id): \(role) leader=\(leader) term=\(term) degraded=\(n.core.degraded)")
            if role == .leader {
                if leaderSince[term] == nil { leaderSince[term] = now }
                if term > maxLeaderTerm {
                    maxLeaderTerm = term
                    maxLeaderTermAt = now
                }
            }
        case .restored:
            break
        case .applied(let cmd, let index):
            oracleApply(cmd, index: index, by: n)
        case .configuration(let change, let index):
            configurationCommitted(change, index: index, by: n)
        case .compacted(let snapshot):
            compact(n, snapshot)
        case .refusal(let why):
            fail(.convergence, "node \(n.id) stopped itself: \(why)")
        case .votersChanged, .rejected, .degradation, .peerClock:
            break
        case .proposal:
            break  // answered to the proposer (`tempoRequest`)
        }
    }

    /// Persists a compaction (the store's queue; synchronous here). Now and
    /// then the node crashes in the middle of it, with no save in flight:
    /// the snapshot's rename or the log's rewrite is torn or lost.
    func compact(_ n: SimNode, _ snapshot: Snapshot) {
        compactions += 1
        let crashing = chaosOn && knobs.crashRate > 0 && n.savingReady == nil && compactionRng.chance(0.3)
        if crashing { n.files.armCrash(afterCalls: Int(compactionRng.range(0, 2))) }
        do {
            try n.store.persistCompaction(snapshot)
        } catch {
            if crashing {
                tornWrites += 1
            } else {
                fail(.restartable, "node \(n.id): the store failed a compaction without a crash: \(error)")
            }
        }
        guard crashing else { return }
        compactionCrashes += 1
        let gen = n.gen
        // Right after this step (the shell finishes its round first, as the
        // loop thread would before the process dies).
        at(now + 1, always: true) { s in if n.up && n.gen == gen { s.crash(n) } }
    }

    // MARK: the oracle: the committed timeline

    func oracleApply(_ cmd: AppliedCommand, index: UInt64, by n: SimNode) {
        if let known = oracleCommands[index] {
            if known != cmd { fail(.onTimeline, "node \(n.id) applied \(cmd) at \(index), others \(known)") }
            return
        }
        oracleCommands[index] = cmd
        guard index > oracleIndex else {
            fail(.onTimeline, "command at \(index) applied after \(oracleIndex)")
            return
        }
        oracleIndex = index
        switch cmd {
        case .epoch(let e):
            _ = oracle.apply(
                .epoch(startBeat: e.startBeat, startNs: e.startNs, bpm: e.bpm, bar: knobs.bar, phases: nil))
        case .tempo(let c):
            _ = oracle.apply(.tempo(atBeat: c.atBeat, bpm: c.bpm, justification: ""))
            let just = n.core.machine.justification
            if just.hasPrefix("req-"), let id = UInt64(just.dropFirst(4)) {
                appliedRequests.insert(id)
                if refusedRequests.contains(id) {
                    fail(.tempoNotRetroactive, "request \(id) was answered refused but took effect")
                }
            }
            // Tempo never changes a published beat.
            guard let t = oracle.timeline else { return }
            count(.tempoNotRetroactive)
            for f in handedOff where !f.degraded && f.index >= c.atBeat {
                count(.tempoNotRetroactive)
                if f.instantNs != t.instantNs(ofBeat: f.index) || f.bpm != bpmOf(t, f.index) {
                    fail(
                        .tempoNotRetroactive,
                        "change to \(c.bpm) bpm at beat \(c.atBeat) alters beat \(f.index) published by node \(f.node + 1)"
                    )
                    return
                }
            }
        case .ignored:
            break
        case .refused(let why), .shapeMismatch(let why):
            // The simulated leaders propose only valid commands with this cluster's shape.
            fail(.onTimeline, "node \(n.id) refused the entry at \(index): \(why)")
        }
    }

    func bpmOf(_ t: Timeline, _ k: Int64) -> Int64 {
        if let p = t.pending, k >= p.atBeat { return p.bpm }
        return t.epoch.bpm
    }

    // MARK: beats

    /// The beat timer fired: the service's beat shell plans and acts.
    func wakeBeat(_ n: SimNode) {
        n.beat.wake()
        n.beat.prepareAhead()
        trace("n\(n.id): beat wake next=\(n.beat.nextBeat) seen=\(n.beat.lastSeenIndex)")
    }

    func armBeat(_ n: SimNode, atWall w: Int64) {
        n.beatTimer += 1
        events.push(max(now + 1, n.clock.trueAt(wall: w)), .beat(node: n.index, gen: n.gen, timer: n.beatTimer))
    }

    /// The beat shell writes beat `k`'s encoded frame (SimBeatPorts.publish):
    /// recorded and checked when it reaches the kernel, queued behind a cut
    /// path, else on its way to the server.
    func handToKernel(_ n: SimNode, _ bytes: [UInt8], beat k: Int64, degraded: Bool) -> Bool {
        guard n.link.connected, let t = n.beat.timeline else { return false }
        // What the bytes say is what the invariants judge (index, term,
        // tempo, deadline, degraded), not what the node meant to write.
        guard case .success(let d) = bytes.withUnsafeBytes({ BeatFrameDecoder.result($0) }), d.beatIndex == k,
            d.degraded == degraded
        else {
            fail(.onTimeline, "node \(n.id) encoded beat \(k) as bytes that do not decode to it")
            return false
        }
        let period = t.instantNs(ofBeat: k + 1) - t.instantNs(ofBeat: k)
        let frame = SimFrame(
            node: n.index, term: d.term, index: d.beatIndex, instantNs: t.instantNs(ofBeat: k), bpm: d.tempoBpm,
            degraded: d.degraded, handoffNs: now, bytes: bytes, deadlineUnixMs: d.deadlineUnixMs, decoded: d)
        checkHandoff(n, frame, period: period)
        if knobs.nodes == 1 { checkAloneHandoff(n, frame) }
        handedOff.append(frame)
        if natsCut[n.index] {
            n.link.kernelQueue.append(frame)
            if n.link.kernelQueue.count == 1 {
                events.push(now + knobs.staleBytesBoundNs, .userTimeout(node: n.index, link: n.link.gen))
            }
        } else {
            openAtHandoff.insert(key(frame))
            events.push(
                now + rng.range(50_000, knobs.natsMaxDelayNs / 2), .natsUp(node: n.index, link: n.link.gen, frame))
        }
        return true
    }

    func key(_ f: SimFrame) -> String { "\(f.node)/\(f.index)/\(f.handoffNs)" }

    /// Invariants at the moment a frame is handed to the kernel.
    func checkHandoff(_ n: SimNode, _ f: SimFrame, period: Int64) {
        guard !f.degraded else { return }
        count(.leaseHeld)
        if maxLeaderTerm > f.term, let since = leaderSince.filter({ $0.key > f.term }).map(\.value).min(), since <= now
        {
            fail(
                .leaseHeld,
                "node \(n.id) published beat \(f.index) in term \(f.term) after a term-\(maxLeaderTerm) leader")
        }
        count(.lateness)
        let late = wall(n) - f.instantNs
        if late < 0 || late >= period / 2 {
            fail(.lateness, "node \(n.id) published beat \(f.index) \(Double(late) / 1e6) ms after its instant")
        }
    }

    // MARK: NATS

    func serverReceives(_ f: SimFrame) {
        received.append(f)
        trace(
            "subject: beat \(f.index) from n\(f.node + 1) term \(f.term)\(f.degraded ? " degraded" : "") handed off at \(Double(f.handoffNs) / 1e9)"
        )
        // Consumer-side invariants, in subject order.
        if !f.degraded {
            count(.uniqueIndex)
            if let other = nonDegradedByIndex[f.index] {
                fail(.uniqueIndex, "beat \(f.index) published by node \(other.node + 1) and node \(f.node + 1)")
            }
            nonDegradedByIndex[f.index] = f
            count(.termMonotonic)
            if f.term < maxTermOnSubject {
                fail(.termMonotonic, "node \(f.node + 1) frame of term \(f.term) after term \(maxTermOnSubject)")
            }
            maxTermOnSubject = max(maxTermOnSubject, f.term)
            count(.onTimeline)
            if let t = oracle.timeline {
                if t.instantNs(ofBeat: f.index) != f.instantNs || bpmOf(t, f.index) != f.bpm
                    || t.deadlineUnixMs(ofBeat: f.index) != f.deadlineUnixMs
                {
                    fail(.onTimeline, "beat \(f.index) from node \(f.node + 1) is not on the committed timeline")
                }
            } else {
                fail(.onTimeline, "a frame before any committed epoch")
            }
        }
        if openAtHandoff.contains(key(f)) {
            // Between degraded publishers (a leader's frames take precedence
            // for consumers; a degraded node defers to the leader it hears).
            let others = connectedByIndex[f.index, default: []].filter { $0.node != f.node && $0.degraded }
            if f.degraded {
                count(.degradedTurns)
                // Among the voters in force (committed): a removed node that
                // has not heard of its removal keeps its old rank (the
                // runbook stops it first); such pairs are only tallied.
                let voters = Set(membership.voters)
                let isVoter = { (i: Int) in voters.contains(self.nodes[i].id) }
                if let o = others.first, !isVoter(o.node) || !isVoter(f.node) {
                    membership.duplicatesWithRemoved += 1
                } else if let o = others.first {
                    // Same or different committed timelines and terms alike:
                    // a frame a node cannot place still marks its index as
                    // on the subject (BeatPlanner.noteUnplaced).
                    fail(
                        .degradedTurns,
                        "beat \(f.index) published by node \(o.node + 1) and node \(f.node + 1), both heard by the subject"
                    )
                }
            }
            if f.degraded { connectedByIndex[f.index, default: []].append(f) }
        }
        for s in nodes where s.up && s.link.connected {
            if natsCut[s.index] {
                s.link.serverQueue.append(f)
            } else {
                events.push(
                    now + rng.range(50_000, knobs.natsMaxDelayNs), .natsDown(node: s.index, link: s.link.gen, f))
            }
        }
    }

    func abortLink(_ n: SimNode) {
        n.link.gen += 1
        n.link.connected = false
        n.link.attachedMonoNs = nil
        n.link.kernelQueue = []
        n.link.serverQueue = []
        let reconnectAt = now + rng.range(100_000_000, 500_000_000)
        n.disturbedUntilNs = max(n.disturbedUntilNs, reconnectAt)
        events.push(reconnectAt, .reconnect(node: n.index, link: n.link.gen))
    }

    func healNats(_ i: Int) {
        natsCut[i] = false
        let n = nodes[i]
        n.disturbedUntilNs = max(n.disturbedUntilNs, now)
        guard n.up, n.link.connected else { return }
        for f in n.link.kernelQueue {
            events.push(now + rng.range(50_000, 1_000_000), .natsUp(node: i, link: n.link.gen, f))
        }
        for f in n.link.serverQueue {
            events.push(now + rng.range(50_000, 1_000_000), .natsDown(node: i, link: n.link.gen, f))
        }
        n.link.kernelQueue = []
        n.link.serverQueue = []
    }

    // MARK: the doorway (fault 5)

    func post(_ n: SimNode, _ item: Posted) {
        switch item {
        case .completion:
            // One Ready in flight at most: its own slot, never dropped.
            precondition(!n.completionPosted, "two store completions in flight")
            n.completionPosted = true
        case .nats:
            // NATS deliveries are the only thing that may be shed (counted).
            guard n.doorway.count < knobs.doorwayCapacity else {
                n.droppedDeliveries += 1
                return
            }
            n.doorway.append(item)
        }
        if !n.stalled(now) { drain(n) }
    }

    func drain(_ n: SimNode) {
        if n.completionPosted {
            n.completionPosted = false
            completeSave(n)
        }
        while !n.doorway.isEmpty && n.up {
            let item = n.doorway.removeFirst()
            switch item {
            case .completion: preconditionFailure("store completions have their own slot, never the doorway")
            case .nats(let f):
                // The service's path: its own last frame by its bytes (no
                // parse), else the decoded bytes (decoded once, when the node
                // handed them off: the decoder is a pure function); then the
                // echo policy in the beat shell.
                if let own = f.bytes.withUnsafeBytes({ n.beat.hearOwn($0, wallNs: wall(n), policy: &n.echo) }) {
                    if case .reject = own.verdict { n.refusedEchoes += 1 }
                    continue
                }
                guard let frame = f.decoded else { preconditionFailure("a frame on the subject was never decoded") }
                if case .reject(let why)? = n.beat.hear(frame, wallNs: wall(n), policy: &n.echo) {
                    n.refusedEchoes += 1
                    trace(
                        "n\(n.id) refused beat \(frame.beatIndex) term \(frame.term) of n\(f.node + 1): \(why) (own term \(n.core.term), next \(n.beat.nextBeat))"
                    )
                }
            }
        }
    }

    func completeSave(_ n: SimNode) {
        guard n.savingReady != nil, let done = n.saveDone else { return }
        n.savingReady = nil
        n.saveDone = nil
        n.trace?.inputs.append(.persisted)
        done(nil)
    }

    // MARK: chaos

    func chaos() {
        guard chaosOn, knobs.randomFaults else { return }
        events.push(now + 100_000_000, .chaos)
        let k = knobs
        if rng.chance(k.partitionRate * 0.1) {
            if raftGroup.allSatisfy({ $0 == 0 }) {
                for i in raftGroup.indices { raftGroup[i] = Int(rng.next() % 2) }
            } else {
                raftGroup = Array(repeating: 0, count: nodes.count)
            }
        }
        // Faults hit machines that still run (all nodes, without membership changes).
        let machines = self.machines
        if rng.chance(k.natsCutRate * 0.1) {
            let i = machines[Int(rng.next() % UInt64(machines.count))].index
            if natsCut[i] { healNats(i) } else { natsCut[i] = true }
        }
        if laterRng.chance(k.natsDisconnectRate * 0.1) {
            let n = laterRng.pick(machines)
            if n.up && n.link.connected { abortLink(n) }
        }
        if rng.chance(k.stallRate * 0.1) {
            let n = rng.pick(machines)
            if n.up && !n.stalled(now) {
                let until = min(now + rng.range(10_000_000, k.stallMaxNs), k.chaosNs)
                if until > now {
                    n.stalledUntil = until
                    n.disturbedUntilNs = max(n.disturbedUntilNs, until)
                    events.push(until, .wake(node: n.index, gen: n.gen))
                }
            }
        }
        if rng.chance(k.crashRate * 0.1) {
            let n = rng.pick(machines)
            // Half the crashes hit the store thread mid-write: the next save's.
            if n.up && n.savingReady == nil && diskRng.chance(0.5) {
                n.crashDuringSave = true
                let gen = n.gen
                at(now + 300_000_000) { s in if n.up && n.gen == gen && n.crashDuringSave { s.crash(n) } }
            } else if n.up {
                crash(n)
            }
        }
        if rng.chance(k.stepRate * 0.1) {
            let n = rng.pick(machines)
            let limit = k.maxOffsetNs / 2 - 1_000_000
            let base: Int64 = 1_700_000_000_000_000_000 - n.clock.monoBase
            let stepped = n.clock.wallOffsetNs + rng.range(-5_000_000, 5_000_000)
            n.clock.wallOffsetNs = min(max(stepped, base - limit), base + limit)
            if n.up, n.beat.started, !n.stalled(now) {
                // The CLOCK_REALTIME timer is cancelled (ECANCELED): re-plan.
                n.beat.start()
            }
        }
        if rng.chance(k.tempoRate * 0.1) { tempoRequest(rng.pick(machines)) }
    }

    /// A tempo request at node `n`, decided as the service's TempoController
    /// decides it (`TempoAdmission.decide`: the rules on the timeline in
    /// force, 409 while this node commits another, only a leader that has
    /// applied its term's first entry proposes); a follower's request is
    /// refused here (the service forwards it to the leader, which decides the same way).
    func tempoRequest(_ n: SimNode) {
        guard n.up, !n.stalled(now), let t = n.beat.timeline else { return }
        let id = nextRequest
        nextRequest += 1
        let effective = TempoAdmission.inForce(t, firstUnpublishedBeat: n.beat.nextBeat).epoch.bpm
        let delta = max(1, effective / 10)
        let requested = effective + (rng.chance(0.5) ? delta : -delta)
        let decision = TempoAdmission.decide(
            requestedBpm: requested, timeline: t, minBpm: 30, maxBpm: 900, inFlight: n.tempoInFlight,
            isLeader: n.core.isLeader, appliedTermStart: n.core.appliedTermStart, nowWallNs: wall(n),
            commitRoundNs: commitRoundNs, firstUnpublishedBeat: n.beat.nextBeat)
        guard case .propose(let change) = decision else {
            refusedRequests.insert(id)
            return
        }
        let atBeat = change.atBeat
        n.tempoInFlight = true
        let command = ClusterCommand.tempo(atBeat: atBeat, bpm: requested, justification: "req-\(id)")
        n.trace?.inputs.append(.propose(command))
        let gen = n.gen
        n.shell.propose(command) { [self] outcome in
            if n.gen == gen { n.tempoInFlight = false }
            answers[id, default: 0] += 1
            if answers[id]! > 1 { fail(.tempoNotRetroactive, "request \(id) was answered twice (\(outcome))") }
            guard outcome == .refused else { return }
            refusedRequests.insert(id)
            if appliedRequests.contains(id) {
                fail(.tempoNotRetroactive, "request \(id) was answered refused but took effect")
            }
        }
    }

    func endChaos() {
        chaosOn = false
        cutLinks = []
        for n in nodes where n.stalledUntil > now {
            n.stalledUntil = now
            events.push(now, .wake(node: n.index, gen: n.gen))
        }
        raftGroup = Array(repeating: 0, count: nodes.count)
        for i in natsCut.indices where natsCut[i] { healNats(i) }
    }

    // MARK: final checks

    func finalChecks() {
        now = endNs
        guard let t = oracle.timeline else {
            fail(.liveness, "no epoch committed in \(Double(endNs) / 1e9) s")
            return
        }
        // One publisher and no gap over the last part of the settle phase.
        let wallEnd = Self.wallBase + endNs
        var k = t.nextBeat(afterNs: wallEnd - knobs.settleNs / 3)
        var publishers = Set<Int>()
        let period = t.instantNs(ofBeat: k + 1) - t.instantNs(ofBeat: k)
        while t.instantNs(ofBeat: k) < wallEnd - period {
            count(.liveness)
            guard let f = nonDegradedByIndex[k] else {
                fail(.liveness, "beat \(k) never published in the settled window")
                return
            }
            publishers.insert(f.node)
            k += 1
        }
        if publishers.count > 1 { fail(.liveness, "\(publishers.count) publishers in the settled window") }
        // Every node applied what was committed (the voters in force: a
        // removed node may never hear of its removal, a node being added
        // whose addition was lost gets nothing).
        let commit = commitMark
        let voters = Set(membership.voters)
        for n in nodes where n.up && voters.contains(n.id) {
            count(.convergence)
            if n.core.raft.appliedIndex < commit {
                fail(.convergence, "node \(n.id) applied \(n.core.raft.appliedIndex) of \(commit)")
            }
        }
    }
}
