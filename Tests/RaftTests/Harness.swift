// Harness.swift — an in-memory cluster for the Raft tests: per-node stable
// storage fed from `Ready` (the only thing a restart can use), a state machine
// that hashes what it applies, and a network of queued messages that tests can
// deliver, drop, cut and partition. Scenario tests drive it by hand; the
// simulator drives it with a seed.

import Raft

/// A small deterministic mixer for hash chains and test randomness.
struct TestRNG: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func chance(_ p: Double) -> Bool { Double(next() >> 11) / Double(1 << 53) < p }
}

func mix(_ h: UInt64, _ v: UInt64) -> UInt64 {
    var z = h ^ (v &+ 0x9E37_79B9_7F4A_7C15 &+ (h << 6) &+ (h >> 2))
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

/// Hash of a log prefix ending with `e`, chained from the prefix before it.
func chain(_ previous: UInt64, _ e: Entry) -> UInt64 {
    var h = mix(previous, e.index)
    h = mix(h, e.term)
    h = mix(h, UInt64(e.kind.rawValue))
    for b in e.data { h = mix(h, UInt64(b)) }
    return h
}

func hashBytes(_ h: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: h >> (8 * $0)) } }
func hashFromBytes(_ b: [UInt8]) -> UInt64 {
    guard b.count == 8 else { return 0 }
    return b.enumerated().reduce(0) { $0 | UInt64($1.element) << (8 * $1.offset) }
}

/// What a node persisted: hard state, snapshot, entries (with prefix hashes).
struct Storage {
    var hardState = HardState()
    var snapshot: Snapshot? = nil
    var snapshotHash: UInt64 = 0
    var entries: [Entry] = []
    var hashes: [UInt64] = []

    var snapshotIndex: UInt64 { snapshot?.index ?? 0 }
    var lastIndex: UInt64 { snapshotIndex + UInt64(entries.count) }

    func hash(at index: UInt64) -> UInt64? {
        if index == snapshotIndex { return snapshotHash }
        if index < snapshotIndex || index > lastIndex { return nil }
        return hashes[Int(index - snapshotIndex - 1)]
    }

    func term(at index: UInt64) -> UInt64? {
        if index == snapshotIndex { return snapshot?.term ?? 0 }
        if index < snapshotIndex || index > lastIndex { return nil }
        return entries[Int(index - snapshotIndex - 1)].term
    }

    /// Persists a Ready; calls `appended` for each entry written with its prefix hash.
    mutating func persist(_ rd: Ready, appended: (Entry, UInt64) -> Void) {
        if let s = rd.snapshot {
            snapshot = s
            snapshotHash = hashFromBytes(s.data)
            entries = []
            hashes = []
        }
        if let first = rd.firstEntryIndex {
            precondition(first > snapshotIndex && first <= lastIndex + 1, "test storage: gap at \(first)")
            let keep = Int(first - snapshotIndex - 1)
            entries.removeLast(entries.count - keep)
            hashes.removeLast(hashes.count - keep)
            for e in rd.entries {
                let h = chain(hashes.last ?? snapshotHash, e)
                entries.append(e)
                hashes.append(h)
                appended(e, h)
            }
        }
        if let hs = rd.hardState { hardState = hs }
    }

    /// Mirrors `RaftNode.compact`.
    mutating func compact(upTo index: UInt64, term: UInt64, data: [UInt8], members: [Member] = []) {
        guard index > snapshotIndex else { return }
        let h = hash(at: index)!
        let drop = Int(index - snapshotIndex)
        entries.removeFirst(drop)
        hashes.removeFirst(drop)
        snapshot = Snapshot(index: index, term: term, data: data, members: members)
        snapshotHash = h
    }
}

/// The application: it only remembers the hash chain of what it applied.
struct StateMachine {
    var appliedIndex: UInt64 = 0
    var appliedHash: UInt64 = 0
    var appliedPayloads: [[UInt8]] = []
}

struct HarnessFailure: Error, CustomStringConvertible {
    var description: String
}

/// An in-memory cluster of `RaftNode`s.
final class Cluster {
    let ids: [NodeID]
    private(set) var nodes: [NodeID: RaftNode] = [:]
    var storage: [NodeID: Storage] = [:]
    var machines: [NodeID: StateMachine] = [:]
    /// Messages sent and not yet delivered, in send order.
    var inFlight: [Message] = []
    /// Pairs (from, to) whose messages are dropped.
    var cut: Set<[NodeID]> = []
    var configure: (NodeID) -> Config
    /// Called for every entry persisted (log-matching checks) and every Ready.
    var onPersist: ((NodeID, Entry, UInt64) -> Void)? = nil
    var onReady: ((NodeID, Ready) throws -> Void)? = nil
    var onApply: ((NodeID, UInt64, UInt64) throws -> Void)? = nil
    /// Every message a node refused or corrected, with the reason (`step`'s outcome).
    var refusals: [(message: Message, rejection: MessageRejection)] = []

    init(size: Int, configure: ((NodeID, [NodeID]) -> Config)? = nil) {
        ids = (1...UInt64(size)).map { $0 }
        let all = ids
        // The application's snapshot check: the harness's states are 8-byte hashes.
        self.configure = { id in
            configure?(id, all) ?? Config(id: id, voters: all, randomSeed: id, snapshotCheck: { $0.count == 8 })
        }
        for id in ids {
            nodes[id] = RaftNode(config: self.configure(id))
            storage[id] = Storage()
            machines[id] = StateMachine()
        }
    }

    subscript(id: NodeID) -> RaftNode { nodes[id]! }
    func isUp(_ id: NodeID) -> Bool { nodes[id] != nil }
    var upIDs: [NodeID] { ids.filter { nodes[$0] != nil } }

    /// The unique node that believes it is leader in the highest term, if any.
    var leader: RaftNode? {
        let leaders = upIDs.map { nodes[$0]! }.filter { $0.role == .leader }
        return leaders.max { $0.term < $1.term }
    }

    // MARK: Ready processing

    /// When set and true for a Ready, that Ready is held (its persistence is
    /// "in progress", as with a sync on another thread) until `completeHeld`;
    /// meanwhile the node keeps stepping and ticking.
    var shouldHold: ((NodeID) -> Bool)? = nil
    private(set) var held: [NodeID: Ready] = [:]

    /// Handles every Ready of `id` in the documented order.
    func process(_ id: NodeID) throws {
        guard let node = nodes[id], held[id] == nil else { return }
        while let rd = node.ready() {
            if let hold = shouldHold, hold(id) {
                held[id] = rd
                return
            }
            try finish(id, rd)
        }
    }

    /// Finishes the held Ready of `id` (if any), then processes what came since.
    func completeHeld(_ id: NodeID) throws {
        guard let rd = held.removeValue(forKey: id) else { return }
        try finish(id, rd)
        try process(id)
    }

    private func finish(_ id: NodeID, _ rd: Ready) throws {
        let node = nodes[id]!
        storage[id]!.persist(rd) { e, h in onPersist?(id, e, h) }
        try onReady?(id, rd)
        inFlight.append(contentsOf: rd.messages)
        var sm = machines[id]!
        if let s = rd.snapshot {
            sm.appliedIndex = s.index
            sm.appliedHash = hashFromBytes(s.data)
            try onApply?(id, sm.appliedIndex, sm.appliedHash)
        }
        for e in rd.committedEntries {
            guard e.index == sm.appliedIndex + 1 else {
                throw HarnessFailure(
                    description: "node \(id) applies \(e.index) after \(sm.appliedIndex)")
            }
            sm.appliedIndex = e.index
            sm.appliedHash = chain(sm.appliedHash, e)
            if e.kind == .normal { sm.appliedPayloads.append(e.data) }
            try onApply?(id, e.index, sm.appliedHash)
        }
        machines[id] = sm
        node.advance(rd)
    }

    func processAll() throws {
        for id in ids { try process(id) }
    }

    // MARK: Faults

    /// Stops `id`: everything not persisted is lost.
    func crash(_ id: NodeID) {
        nodes[id] = nil
        held[id] = nil  // a Ready being persisted is lost with the process
    }

    /// Restarts `id` from its storage.
    func restart(_ id: NodeID) throws {
        precondition(nodes[id] == nil)
        let s = storage[id]!
        nodes[id] = try RaftNode(
            config: configure(id), hardState: s.hardState, snapshot: s.snapshot, entries: s.entries)
        machines[id] = StateMachine(appliedIndex: s.snapshotIndex, appliedHash: s.snapshotHash)
    }

    func isolate(_ id: NodeID) {
        for other in ids where other != id {
            cut.insert([id, other])
            cut.insert([other, id])
        }
    }

    /// Splits the cluster: messages between the groups are dropped.
    func partition(_ groups: [[NodeID]]) {
        cut = []
        for (i, g) in groups.enumerated() {
            for (j, h) in groups.enumerated() where i != j {
                for a in g { for b in h { cut.insert([a, b]) } }
            }
        }
    }

    func heal() { cut = [] }

    // MARK: Delivery (scenario style)

    /// Delivers one message now (if its path is not cut and its target is up).
    func deliver(_ m: Message) throws {
        guard !cut.contains([m.from, m.to]), let node = nodes[m.to] else { return }
        if let rejection = node.step(m).rejection { refusals.append((m, rejection)) }
        try process(m.to)
    }

    /// Delivers everything in flight once (not what that produces); `drop`
    /// decides which messages are lost.
    func deliverAll(drop: (Message) -> Bool = { _ in false }) throws {
        let batch = inFlight
        inFlight = []
        for m in batch where !drop(m) { try deliver(m) }
    }

    /// Delivers until no message is in flight (bounded).
    func stabilize(drop: (Message) -> Bool = { _ in false }) throws {
        try processAll()
        var rounds = 0
        while !inFlight.isEmpty {
            rounds += 1
            if rounds >= 10_000 {
                throw HarnessFailure(
                    description: "stabilize did not converge; in flight: \(inFlight.prefix(6).map { "\($0)" })")
            }
            try deliverAll(drop: drop)
        }
    }

    /// Ticks the given nodes (all up nodes by default) `n` times, stabilizing
    /// the network after each tick.
    func tick(_ n: Int = 1, only: [NodeID]? = nil, stabilize: Bool = true) throws {
        for _ in 0..<n {
            for id in only ?? upIDs { nodes[id]?.tick() }
            if stabilize { try self.stabilize() } else { try processAll() }
        }
    }

    /// `id` starts an election and the network settles.
    func campaign(_ id: NodeID) throws {
        self[id].campaign()
        try stabilize()
    }

    func propose(_ id: NodeID, _ data: [UInt8]) throws -> ProposeResult {
        let r = self[id].propose(data)
        try stabilize()
        return r
    }
}

extension Cluster {
    /// Compacts `id`'s log (in the node and in its storage) up to what it applied.
    func compact(_ id: NodeID) {
        let node = self[id]
        let index = node.appliedIndex
        guard index > node.snapshotIndex, let h = storage[id]!.hash(at: index),
            let t = storage[id]!.term(at: index)
        else { return }
        node.compact(upTo: index, snapshotData: hashBytes(h))
        storage[id]!.compact(upTo: index, term: t, data: hashBytes(h), members: node.snapshot.members)
    }

    /// Ticks everyone until some node leads (bounded), and returns it.
    @discardableResult
    func electLeader(notIn excluded: [NodeID] = [], maxTicks: Int = 500) throws -> RaftNode {
        for _ in 0..<maxTicks {
            if let l = leader, l.hasLease(), !excluded.contains(l.id) { return l }
            try tick()
        }
        throw HarnessFailure(description: "no leader after \(maxTicks) ticks")
    }

    /// The payloads of normal entries `id` has applied.
    func applied(_ id: NodeID) -> [[UInt8]] { machines[id]!.appliedPayloads }
}
