// ConformanceTests.swift — issue #19, item 7: the service's cluster shell and
// the simulator are one program. A seeded simulation records everything one
// node's `ClusterShell` is given (ticks, peers' messages with their clock
// samples, store completions, proposals, every clock read) and everything it
// does (events, messages sent). The trace is then replayed through a fresh
// `ClusterShell` whose ports are the service's: a real `EventLoop` (store
// completions come back through `postCompletion`, drained by `turn`, as in
// the binary) and the real `RaftStore` writing on its own queue (over a
// simulated disk instead of a data dir), with a transport that records. The
// two event and message sequences must be equal, element by element. The
// second test replays the same trace through the service's `ClusterNode`
// itself (its own port code: RaftStore.save on the store queue, completions
// through the loop, compaction, membership peers) with a recording link in
// place of RaftTransport and the recorded clocks.
import Foundation
import Logging
import PulseCore
import PulsePolicy
import Raft
import XCTest

@testable import Pulse

/// One node's shell, as recorded in the simulator.
final class ShellTrace {
    enum Input {
        case start
        case tick
        case receive(Message, SyncSample?, Int64)
        case persisted
        case propose(ClusterCommand)
    }
    var inputs: [Input] = []
    /// Every clock read of the shell (monotonic and wall), in order.
    var times: [Int64] = []
    var events: [ClusterEvent] = []
    var sent: [Message] = []
    /// How the core was built (first start: empty disk).
    var start: (seed: UInt64, monoNs: Int64, voters: [NodeID], timing: ClusterTiming, bpm: Int64, bar: Int)?
}

/// The service's ports around a replayed shell: a real EventLoop, the real
/// RaftStore on its queue, recorded clocks, a recording transport.
final class ReplayPorts: ClusterPorts {
    let loop: EventLoop
    let store: RaftStore
    private let times: [Int64]
    private(set) var read = 0
    /// Clock reads beyond the recorded ones (the shell diverged).
    private(set) var overread = false
    var events: [ClusterEvent] = []
    var sent: [Message] = []
    private(set) var completions = 0
    private(set) var failure: Error?

    init(loop: EventLoop, times: [Int64]) {
        self.loop = loop
        self.times = times
        store = RaftStore(files: SimFiles(seed: 1))
    }

    private func next() -> Int64 {
        guard read < times.count else {
            overread = true
            return times.last ?? 0
        }
        defer { read += 1 }
        return times[read]
    }

    var monoNs: Int64 { next() }
    var wallNs: Int64 { next() }
    func persist(_ ready: Ready, done: @escaping (Error?) -> Void) {
        store.save(hardState: ready.hardState, snapshot: ready.snapshot, entries: ready.entries) { [loop] error in
            loop.postCompletion {
                self.completions += 1
                done(error)
            }
        }
    }
    func send(_ message: Message) { sent.append(message) }
    func messagesSent() {}
    func handle(_ event: ClusterEvent) { events.append(event) }
    func persistFailed(_ error: Error) { failure = error }

    /// Turns the loop until `count` completions ran (at most 5 s).
    func awaitCompletions(_ count: Int) -> Bool {
        let deadline = Date().addingTimeInterval(5)
        while completions < count && Date() < deadline { loop.turn(timeoutNs: 10_000_000) }
        return completions >= count
    }
}

final class ConformanceTests: XCTestCase {
    /// Seeds of three nodes, and one of a single node (a one-voter cluster,
    /// which campaigns at `ClusterShell.start`).
    static let seeds: [(seed: UInt64, alone: Bool)] = [(3, false), (17, false), (42, false), (4, true)]

    /// A seeded run with partitions, drops, stalls and tempo requests (no
    /// crashes: one incarnation is recorded), node 1 traced from its start.
    func recordedTrace(seed: UInt64, alone: Bool = false) -> ShellTrace {
        var rng = SimRNG(seed: seed)
        var knobs = SimKnobs.random(&rng, seed: seed)
        if alone {
            knobs.nodes = 1
            knobs.diskDamage = false
        }
        knobs.crashRate = 0
        knobs.tempoRate = 1.0
        let trace = ShellTrace()
        let sim = Simulation(seed: seed, knobs: knobs, tracing: trace)
        XCTAssertNil(sim.run(), "seed \(seed) runs clean")
        return trace
    }

    func testServiceShellReplaysTheSimulatorsTrace() throws {
        var proposals = 0
        defer { XCTAssertGreaterThan(proposals, 0, "some seed's node 1 proposed tempo changes") }
        for (seed, alone) in Self.seeds {
            let trace = recordedTrace(seed: seed, alone: alone)
            let start = try XCTUnwrap(trace.start)
            XCTAssertEqual(start.voters.count == 1, alone, "seed \(seed): \(start.voters.count) voters")
            XCTAssertGreaterThan(trace.events.count, 20, "seed \(seed): a trace worth comparing")
            proposals += trace.inputs.filter { if case .propose = $0 { true } else { false } }.count

            let loop = try EventLoop()
            loop.bindToCurrentThread()
            let ports = ReplayPorts(loop: loop, times: trace.times)
            let core = try ClusterCore(
                id: 1, voters: start.voters, timing: start.timing, seed: start.seed, nowMonoNs: start.monoNs,
                shape: try TimelineShape(bar: start.bar, phases: ["beat"]), bootstrapBpm: start.bpm,
                hardState: HardState(), snapshot: nil, entries: [])
            let shell = ClusterShell(core: core, ports: ports)
            var persisted = 0
            for input in trace.inputs {
                switch input {
                case .start: shell.start()
                case .tick: shell.tick()
                case .receive(let m, let sample, let wall): shell.receive(m, clockSample: sample, peerWallNs: wall)
                case .propose(let command): shell.propose(command) { _ in }
                case .persisted:
                    persisted += 1
                    XCTAssertTrue(ports.awaitCompletions(persisted), "seed \(seed): the store's completion came back")
                }
            }
            XCTAssertNil(ports.failure)
            XCTAssertFalse(ports.overread, "seed \(seed): the replay read the clock more often than the run")
            XCTAssertEqual(ports.read, trace.times.count, "seed \(seed): every clock read replayed")
            XCTAssertEqual(ports.sent.count, trace.sent.count, "seed \(seed)")
            if let i = zip(ports.sent, trace.sent).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
                XCTFail("seed \(seed): message \(i) differs: \(ports.sent[i]) vs \(trace.sent[i])")
            }
            XCTAssertEqual(ports.events.count, trace.events.count, "seed \(seed)")
            if let i = zip(ports.events, trace.events).enumerated().first(where: { $0.element.0 != $0.element.1 })?
                .offset
            {
                XCTFail("seed \(seed): event \(i) differs: \(ports.events[i]) vs \(trace.events[i])")
            }
        }
    }
}

/// A RaftTransport stand-in that records what the node sends.
final class RecordingLink: RaftLink {
    var sent: [Message] = []
    var peerLists = 0
    func start() throws {}
    func stop() {}
    func send(_ message: Message) { sent.append(message) }
    func setPeers(_ list: PeerList) { peerLists += 1 }
    var stats: RaftTransportStats { RaftTransportStats() }
}

extension ConformanceTests {
    func testServiceClusterNodeReplaysTheSimulatorsTrace() throws {
        for (seed, alone) in Self.seeds {
            let trace = recordedTrace(seed: seed, alone: alone)
            let start = try XCTUnwrap(trace.start)
            let loop = try EventLoop()
            loop.bindToCurrentThread()
            // The node reads the clock once to build its core, then as the shell does.
            var times = [start.monoNs] + trace.times
            var overread = false
            let next: () -> Int64 = {
                guard !times.isEmpty else {
                    overread = true
                    return 0
                }
                return times.removeFirst()
            }
            let me = Peer(name: "n1", host: "127.0.0.1", port: 1, raftId: 1, hasId: true)
            let peers = PeerList(
                peers: start.voters.map {
                    Peer(name: "n\($0)", host: "127.0.0.1", port: Int($0), raftId: $0, hasId: true)
                },
                me: me, bindHost: "127.0.0.1", bindPort: 1)
            let link = RecordingLink()
            var logger = Logger(label: "conformance")
            logger.logLevel = .critical
            let node = try ClusterNode(
                peers: peers, timing: start.timing, store: RaftStore(files: SimFiles(seed: 1)), dataDir: "sim",
                seed: start.seed, clock: ShellClock(monoNs: next, wallNs: next), bootstrapBpm: start.bpm,
                shape: try TimelineShape(bar: start.bar, phases: ["beat"]), loop: loop, rejected: RejectedInput(),
                logger: logger, makeLink: { _, _ in link })
            var events: [ClusterEvent] = []
            node.onEvent = { events.append($0) }
            var persisted = 0
            for input in trace.inputs {
                switch input {
                // ClusterNode.start is this call plus the link and the tick
                // timer (a live timer would tick the replay off its trace).
                case .start: node.shell.start()
                case .tick: node.shell.tick()
                case .receive(let m, let sample, let wall):
                    node.transportReceived(m, clockSample: sample, peerWallNs: wall)
                case .propose(let command): node.propose(command) { _ in }
                case .persisted:
                    persisted += 1
                    let deadline = Date().addingTimeInterval(5)
                    while node.completedSaves < persisted && Date() < deadline { loop.turn(timeoutNs: 1_000_000) }
                    XCTAssertEqual(node.completedSaves, persisted, "seed \(seed): the store's completion came back")
                }
            }
            XCTAssertFalse(overread, "seed \(seed): the node read the clock more often than the run")
            XCTAssertTrue(times.isEmpty, "seed \(seed): \(times.count) clock reads of the run not replayed")
            XCTAssertEqual(link.sent.count, trace.sent.count, "seed \(seed)")
            if let i = zip(link.sent, trace.sent).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
                XCTFail("seed \(seed): message \(i) differs: \(link.sent[i]) vs \(trace.sent[i])")
            }
            XCTAssertEqual(events.count, trace.events.count, "seed \(seed)")
            if let i = zip(events, trace.events).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
                XCTFail("seed \(seed): event \(i) differs: \(events[i]) vs \(trace.events[i])")
            }
        }
    }
}
