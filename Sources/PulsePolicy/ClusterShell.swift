// PulsePolicy/ClusterShell.swift — the driver loop of one node over its
// ports (etcd raft's doc.go; TigerBeetle's Replica(StateMachine, MessageBus,
// Storage, Time)):
//
//     start()          → core.resetTicks, core.campaignIfAlone, tick()
//     timer            → tick()     → core.tick
//     a peer's message → receive()  → core.step
//     drive():  events → ports.handle
//               core.nextReady → ports.persist (synced off the loop) → done
//               → core.finish → ports.send each message → drive again
//
// The `pulse` binary plugs in the live ports (Pulse/Cluster/ClusterNode:
// the loop's clocks, RaftStore on its queue, RaftTransport); the
// whole-cluster simulator plugs in simulated ones (a simulated disk under
// the same RaftStore, a lossy network, drifting clocks). Both run this class
// and the core inside it: nothing of the driver loop is written twice.
import PulseCore
import Raft

/// What the shell needs from the world around it (loop thread only).
public protocol ClusterPorts: AnyObject {
    /// Monotonic and wall (Unix) time now, in nanoseconds.
    var monoNs: Int64 { get }
    var wallNs: Int64 { get }
    /// Persists `ready` (an installed snapshot replaces the log; then the
    /// entries; then the hard state) and syncs it, off the loop thread; calls
    /// `done` back on the loop, never dropped, with nil or why it failed.
    func persist(_ ready: Ready, done: @escaping (Error?) -> Void)
    /// Sends a message to its peer (best effort: Raft tolerates loss).
    func send(_ message: Message)
    /// A Ready's messages are all out (membership: old peers may go now).
    func messagesSent()
    /// One of the core's events, in order (the shell's listener).
    func handle(_ event: ClusterEvent)
    /// Persisting failed: nothing of that Ready may be acknowledged.
    func persistFailed(_ error: Error)
}

/// One node's driver loop around its `ClusterCore`. Not thread-safe.
public final class ClusterShell {
    public let core: ClusterCore
    private unowned let ports: ClusterPorts
    /// Stopped by a failed persist: no Ready is taken any more.
    public private(set) var halted = false
    private var nextRequest: UInt64 = ClusterCore.bootstrapRequest + 1
    private var pending: [UInt64: (ProposalOutcome) -> Void] = [:]

    public init(core: ClusterCore, ports: ClusterPorts) {
        self.core = core
        self.ports = ports
    }

    /// The node starts (a first start or a restart from its disk): ticks
    /// count from now, a lone voter campaigns at once
    /// (`ClusterCore.campaignIfAlone`), then the first tick. The service
    /// (ClusterNode.start) and the simulator's boot both call this.
    public func start() {
        core.resetTicks(nowMonoNs: ports.monoNs)
        core.campaignIfAlone()
        tick()
    }

    /// The tick timer fired.
    public func tick() {
        core.tick(nowMonoNs: ports.monoNs)
        drive()
    }

    /// A message from a peer with its frame's clock sample and wall time.
    public func receive(_ message: Message, clockSample: SyncSample?, peerWallNs: Int64?) {
        core.step(message, clockSample: clockSample, peerWallNs: peerWallNs, nowMonoNs: ports.monoNs)
        drive()
    }

    /// Hands the core's events on, then its next Ready to the store.
    public func drive() {
        for event in core.takeEvents() {
            if case .proposal(let id, let outcome) = event { pending.removeValue(forKey: id)?(outcome) }
            ports.handle(event)
        }
        guard !halted, let ready = core.nextReady() else { return }
        if ready.hardState == nil && ready.entries.isEmpty && ready.snapshot == nil { return finish(ready) }
        ports.persist(ready) { [weak self] error in
            guard let self else { return }
            guard let error else { return self.finish(ready) }
            self.halted = true
            self.ports.persistFailed(error)
        }
    }

    private func finish(_ ready: Ready) {
        let messages = core.finish(ready, nowMonoNs: ports.monoNs, nowWallNs: ports.wallNs)
        for message in messages { ports.send(message) }
        ports.messagesSent()
        drive()
    }

    // MARK: requests

    /// Proposes `command`; `done` hears how it ended (`.unknown` when
    /// leadership was lost first: the entry may still commit).
    public func propose(_ command: ClusterCommand, done: @escaping (ProposalOutcome) -> Void) {
        let id = takeRequestId()
        guard core.propose(command, requestId: id) != nil else { return done(.refused) }
        pending[id] = done
        drive()
    }

    /// Leader only: adds `member` or removes the voter `remove`; `done`
    /// hears the commit outcome when `.accepted` is returned.
    public func proposeMembership(
        add member: Member?, remove: NodeID?, context: (NodeID) -> [UInt8]?,
        done: @escaping (ProposalOutcome) -> Void
    ) -> MembershipProposal {
        let id = takeRequestId()
        let answer = core.proposeMembership(add: member, remove: remove, requestId: id, context: context)
        if answer == .accepted { pending[id] = done }
        drive()
        return answer
    }

    /// Hands leadership to `target` (nil: the most up-to-date follower).
    public func transferLeadership(to target: NodeID? = nil) -> Bool {
        let started = core.transferLeadership(to: target)
        drive()
        return started
    }

    private func takeRequestId() -> UInt64 {
        defer { nextRequest &+= 1 }
        return nextRequest
    }
}
