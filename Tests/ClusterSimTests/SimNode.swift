// SimNode.swift — one simulated pulse process: the service's cluster shell
// and beat shell over simulated ports, its data dir, its NATS link and its
// loop's doorway.
import PulseCore
import PulsePolicy
import Raft

@testable import Pulse

/// The NATS connection of one node, as the kernel and the server see it.
struct SimLink {
    /// Bumped at every abort/reconnect; events of an older link are void.
    var gen = 0
    var connected = false
    var attachedMonoNs: Int64?
    /// Frames handed to the kernel while the path to the server is cut.
    var kernelQueue: [SimFrame] = []
    /// Frames the server holds for this subscriber while cut.
    var serverQueue: [SimFrame] = []
}

final class SimNode {
    let index: Int
    let id: NodeID
    let clock: NodeClock
    var gen = 0
    var up = true
    var core: ClusterCore!
    /// The service's beat side (one per incarnation, over `beatPorts`).
    var beat: BeatShell!
    let plannerConfig: PlannerConfig
    /// The beat subscription's echo policy (one per incarnation, as in the service).
    var echo: EchoPolicy!
    /// Its data dir's `raft/` files (a simulated disk that survives crashes)
    /// and the service's own store over them (one per incarnation).
    let files: SimFiles
    var store: RaftStore!
    /// A crash is due while the store thread writes the next Ready.
    var crashDuringSave = false
    var link = SimLink()
    var stalledUntil: Int64 = 0
    /// Raft frames read once the loop runs again.
    var socketBacklog: [(Message, Stamp)] = []
    var tickPending = false
    var beatPending = false
    var emitPending: (Int64, Bool, Int64)?
    /// The loop's doorway: NATS deliveries, with a separate slot for the store's completion.
    var doorway: [Posted] = []
    var completionPosted = false
    var savingReady: Ready?
    /// The shell's completion for `savingReady`.
    var saveDone: ((Error?) -> Void)?
    /// The service's driver loop over this node's simulated ports.
    var shell: ClusterShell!
    private(set) lazy var ports = SimPorts(node: self)
    private(set) lazy var beatPorts = SimBeatPorts(node: self)
    /// Set by the simulation before the first boot.
    weak var sim: Simulation?
    /// What this node's shell was given and did (ConformanceTests), while recorded.
    var trace: ShellTrace?
    var beatTimer = 0
    var lastFrom: [NodeID: (theirSend: Int64, myRecv: Int64)] = [:]
    var droppedDeliveries = 0
    /// What it acknowledged to peers, across incarnations (`ackedDurable`):
    /// the highest term of a message it sent (pre-votes aside), whom it
    /// voted for per term, and the highest entry it acknowledged per term.
    var maxSentTerm: UInt64 = 0
    var votedFor: [UInt64: NodeID] = [:]
    var ackedIndex: [UInt64: UInt64] = [:]
    /// Frames its echo policy refused (a stale term, an index too far off).
    var refusedEchoes = 0
    /// Its shell is committing a tempo change (the controller's `inFlight`: another is 409).
    var tempoInFlight = false
    /// It installed a leader's snapshot since its last start (`installRestart`).
    var installedSinceBoot = false
    /// Scripted: the next installed snapshot is written, then the process
    /// dies before the store rewrites the log.
    var crashAfterInstallWrite = false
    /// A slow disk for this node only (scripted scenarios): every save takes this long.
    var storeFixedNs: Int64?
    /// The Raft bootstrap voters it starts with (its -peers): every first
    /// node; a joining node gets the voters in force without itself.
    var bootVoters: [NodeID] = []
    /// One-voter runs (`aloneResumes`): the last restart from its disk, the
    /// last non-degraded frame handed to the kernel (true time, across
    /// incarnations) and the highest index handed off, and until when a
    /// stall or a NATS cut or disconnect kept it from publishing.
    var restartedAtNs: Int64 = 0
    var lastHandoffNs: Int64 = -1
    var highestHandedOff: Int64?
    var disturbedUntilNs: Int64 = 0

    init(index: Int, clock: NodeClock, planner: PlannerConfig, diskSeed: UInt64) {
        self.index = index
        files = SimFiles(seed: diskSeed)
        self.id = NodeID(index + 1)
        self.clock = clock
        self.plannerConfig = planner
    }

    /// Its node id (the HLC suffix frames carry is its last 4 characters).
    var nodeName: String { "sim-node-\(String(1000 + id))" }

    func stalled(_ now: Int64) -> Bool { now < stalledUntil }
}

/// The simulated ports of one node's `ClusterShell`: its drifting clocks,
/// the store thread over its simulated disk, the lossy Raft network, and
/// the simulation's checks as the listener.
final class SimPorts: ClusterPorts {
    unowned let node: SimNode
    init(node: SimNode) { self.node = node }
    private var sim: Simulation { node.sim! }

    var monoNs: Int64 {
        let t = sim.mono(node)
        node.trace?.times.append(t)
        return t
    }
    var wallNs: Int64 {
        let t = sim.wall(node)
        node.trace?.times.append(t)
        return t
    }
    func persist(_ ready: Ready, done: @escaping (Error?) -> Void) { sim.startSave(node, ready, done: done) }
    func send(_ message: Message) {
        node.trace?.sent.append(message)
        sim.send(node, message)
    }
    func messagesSent() {}
    func handle(_ event: ClusterEvent) {
        node.trace?.events.append(event)
        sim.clusterEvent(node, event)
    }
    func persistFailed(_ error: Error) { sim.fail(.restartable, "node \(node.id): persisting failed: \(error)") }
}

/// The simulated ports of one node's `BeatShell`: its drifting clocks, a
/// beat timer on the event queue, a spin that resumes as an event at the
/// target (the loop is busy meanwhile), and the simulated NATS link.
final class SimBeatPorts: BeatPorts {
    unowned let node: SimNode
    init(node: SimNode) { self.node = node }
    private var sim: Simulation { node.sim! }

    func nowWallNs() -> Int64 { sim.wall(node) }
    func nowMonoNs() -> Int64 { sim.mono(node) }
    var natsAttachedMonoNs: Int64? { node.link.connected ? node.link.attachedMonoNs : nil }

    func armBeat(atWallNs wallNs: Int64, exact: Bool) {
        guard node.up else { return }
        // A millisecond's lead, never in the past.
        sim.armBeat(node, atWall: exact ? wallNs : max(wallNs - 1_000_000, sim.wall(node) + 1_000_000))
    }

    func spin(untilWallNs target: Int64, beat: Int64, degraded: Bool) -> Int64? {
        let now = sim.wall(node)
        guard now < target else { return now }
        // Until the wall clock reads the target (also after a step back).
        let e = SimEvent.emit(node: node.index, gen: node.gen, index: beat, degraded: degraded, atWall: target)
        sim.events.push(max(sim.now + 1, node.clock.trueAt(wall: target)), e)
        return nil
    }

    func publish(_ frame: UnsafeRawBufferPointer, beat: Int64, targetWallNs: Int64, degraded: Bool) -> Bool {
        sim.handToKernel(node, [UInt8](frame), beat: beat, degraded: degraded)
    }

    func dropConnection() { sim.abortLink(node) }
    func note(_ note: BeatNote) {}
    func tempoTookEffect(epoch: TempoEpoch, previousBpm: Int64) {}
}
