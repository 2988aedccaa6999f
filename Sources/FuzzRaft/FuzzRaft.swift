// FuzzRaft — libFuzzer harness: Raft frames from a hostile peer, decoded and
// stepped into a live in-memory cluster of three `RaftNode` cores.
//
// Each input is a script run against a fresh cluster (ids 1, 2, 3) that has
// already elected a leader and committed a few entries, driven through the
// public API only and in the caller's order the core documents (persist,
// send, apply, advance). Every script op starts with one byte `op`; `op % 8`
// selects it and `arg = op >> 3` (0...31) parameterises it:
//
//   0 frame    u16 LE length n, then n bytes: `Message.decode`. A frame that
//              decodes must re-encode to the same bytes, and is stepped into
//              node `to` (or, when `to` is not a member, node 1 + arg % 3,
//              which must drop it).
//   1 tick     every live node ticks 1 + arg times; the cores' own messages
//              are delivered after each tick.
//   2 deliver  delivers the first 1 + arg in-flight messages (what they
//              produce is queued).
//   3 drop     drops in-flight message arg % count.
//   4 forge    u8 k, u64 LE v: in-flight message k % count with field
//              arg % 9 (term, logTerm, index, commit, rejectHint, leaseTick,
//              from, reject/transfer flags, entry term) set to v, stepped
//              into its target: a well-formed message with hostile numbers.
//   5 propose  the leader (if any) proposes `arg` bytes.
//   6 restart  node 1 + arg % 3 crashes and restarts from what it persisted.
//   7 compact  node 1 + arg % 3 compacts its log up to what it applied.
//
// What it checks: no trap in the decoder or the core, canonical encoding,
// every Ready consistent with the contract (no gap in persisted entries,
// committed entries applied in order), and that a node restarts from its
// persisted state. Safety across nodes is not checked: a forged frame may
// legitimately make members disagree; it must never crash one.
//
// Build and run: `make fuzz` (docs/fuzzing.md). Reproduce: `FuzzRaft <artifact>`.
import Raft

private let ids: [NodeID] = [1, 2, 3]
/// Bounds per input, so one input cannot run for long.
private let maxOps = 256
private let maxTicksPerOp = 32
private let maxInFlight = 4096
private let maxDeliveryRounds = 64

/// What a node persisted through its Readies (mirrors Tests/RaftTests/Harness.swift).
private struct Storage {
    var hardState = HardState()
    var snapshot: Snapshot? = nil
    var entries: [Entry] = []

    var snapshotIndex: UInt64 { snapshot?.index ?? 0 }
    var lastIndex: UInt64 { snapshotIndex + UInt64(entries.count) }

    mutating func persist(_ rd: Ready, node: NodeID) {
        if let s = rd.snapshot {
            snapshot = s
            entries = []
        }
        if let first = rd.firstEntryIndex {
            guard first > snapshotIndex, first <= lastIndex + 1 else {
                fatalError(
                    "FuzzRaft: node \(node) Ready entries start at \(first), log is \(snapshotIndex)...\(lastIndex)")
            }
            entries.removeLast(entries.count - Int(first - snapshotIndex - 1))
            entries.append(contentsOf: rd.entries)
        }
        if let hs = rd.hardState { hardState = hs }
    }

    mutating func compact(upTo index: UInt64, term: UInt64) {
        guard index > snapshotIndex, index <= lastIndex else { return }
        entries.removeFirst(Int(index - snapshotIndex))
        snapshot = Snapshot(index: index, term: term, data: [])
    }
}

/// Three cores, their storage and applied index, and the messages between them.
private final class Cluster {
    var nodes: [NodeID: RaftNode] = [:]
    var storage: [NodeID: Storage] = [:]
    var applied: [NodeID: UInt64] = [:]
    var inFlight: [Message] = []

    init() {
        for id in ids {
            nodes[id] = RaftNode(config: Self.config(id))
            storage[id] = Storage()
            applied[id] = 0
        }
    }

    static func config(_ id: NodeID) -> Config { Config(id: id, voters: ids, randomSeed: id) }

    var leader: RaftNode? {
        nodes.values.filter { $0.role == .leader }.max { $0.term < $1.term }
    }

    /// Handles every Ready of `id` in the documented order.
    func process(_ id: NodeID) {
        guard let node = nodes[id] else { return }
        while let rd = node.ready() {
            storage[id]!.persist(rd, node: id)
            if inFlight.count < maxInFlight { inFlight.append(contentsOf: rd.messages) }
            var index = applied[id]!
            if let s = rd.snapshot { index = s.index }
            for e in rd.committedEntries {
                guard e.index == index + 1 else {
                    fatalError("FuzzRaft: node \(id) applies \(e.index) after \(index)")
                }
                index = e.index
            }
            applied[id] = index
            node.advance(rd)
        }
    }

    func processAll() { for id in ids { process(id) } }

    func step(_ m: Message, into id: NodeID) {
        guard let node = nodes[id] else { return }
        node.step(m)
        process(id)
    }

    func deliver(count: Int) {
        let n = min(count, inFlight.count)
        let batch = inFlight.prefix(n)
        inFlight.removeFirst(n)
        for m in batch { step(m, into: m.to) }
    }

    /// Delivers until quiet or the round bound.
    func settle() {
        processAll()
        var rounds = 0
        while !inFlight.isEmpty && rounds < maxDeliveryRounds {
            rounds += 1
            deliver(count: inFlight.count)
        }
    }

    func tick(_ n: Int) {
        for _ in 0..<n {
            for id in ids { nodes[id]?.tick() }
            settle()
        }
    }

    /// Crash (losing nothing persisted) and restart from storage.
    func restart(_ id: NodeID) {
        let s = storage[id]!
        inFlight.removeAll { $0.to == id }
        do {
            nodes[id] = try RaftNode(
                config: Self.config(id), hardState: s.hardState, snapshot: s.snapshot, entries: s.entries)
        } catch {
            fatalError("FuzzRaft: node \(id) cannot restart from what it persisted: \(error)")
        }
        applied[id] = s.snapshotIndex
        process(id)
    }

    func compact(_ id: NodeID) {
        guard let node = nodes[id] else { return }
        let index = applied[id]!
        guard index > node.snapshotIndex, index <= storage[id]!.lastIndex else { return }
        let s = storage[id]!
        let term = index == s.snapshotIndex ? s.snapshot?.term ?? 0 : s.entries[Int(index - s.snapshotIndex - 1)].term
        node.compact(upTo: index, snapshotData: [])
        storage[id]!.compact(upTo: index, term: term)
    }
}

/// A bounds-checked reader over the fuzzer's bytes; reads past the end give 0.
private struct Script {
    let bytes: UnsafeRawBufferPointer
    var position = 0

    var atEnd: Bool { position >= bytes.count }

    mutating func u8() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func u16() -> Int { Int(u8()) | Int(u8()) << 8 }

    mutating func u64() -> UInt64 {
        var v: UInt64 = 0
        for k in 0..<8 { v |= UInt64(u8()) << (8 * k) }
        return v
    }

    mutating func take(_ n: Int) -> ArraySlice<UInt8> {
        let end = min(bytes.count, position + n)
        defer { position = end }
        return ArraySlice(bytes[position..<end])
    }
}

/// Sets one field of `m` to `v` (see op 4 in the header).
private func forge(_ m: Message, field: Int, value v: UInt64) -> Message {
    var m = m
    switch field {
    case 0: m.term = v
    case 1: m.logTerm = v
    case 2: m.index = v
    case 3: m.commit = v
    case 4: m.rejectHint = v
    case 5: m.leaseTick = v
    case 6: m.from = ids[Int(v % 3)]
    case 7:
        m.reject = v & 1 != 0
        m.transfer = v & 2 != 0
    default:
        if !m.entries.isEmpty { m.entries[Int(v % UInt64(m.entries.count))].term = v >> 8 }
    }
    return m
}

private func run(_ script: inout Script) {
    let cluster = Cluster()
    // A realistic starting point: a leader with a few committed entries.
    for _ in 0..<200 where cluster.leader == nil { cluster.tick(1) }
    for k: UInt8 in 1...3 { _ = cluster.leader?.propose([k]) }
    cluster.settle()

    var ops = 0
    while !script.atEnd && ops < maxOps {
        ops += 1
        let op = script.u8()
        let arg = Int(op >> 3)
        switch op % 8 {
        case 0:
            let frame = script.take(script.u16())
            guard let m = try? Message.decode(frame) else { continue }
            guard m.encoded() == Array(frame) else { fatalError("FuzzRaft: decode/encode is not canonical") }
            cluster.step(m, into: ids.contains(m.to) ? m.to : ids[arg % 3])
        case 1:
            cluster.tick(min(1 + arg, maxTicksPerOp))
        case 2:
            cluster.deliver(count: 1 + arg)
        case 3:
            if !cluster.inFlight.isEmpty { cluster.inFlight.remove(at: arg % cluster.inFlight.count) }
        case 4:
            let k = Int(script.u8())
            let v = script.u64()
            guard !cluster.inFlight.isEmpty else { continue }
            let m = forge(cluster.inFlight[k % cluster.inFlight.count], field: arg % 9, value: v)
            cluster.step(m, into: m.to)
        case 5:
            _ = cluster.leader?.propose([UInt8](repeating: op, count: arg))
            cluster.processAll()
        case 6:
            cluster.restart(ids[arg % 3])
        default:
            cluster.compact(ids[arg % 3])
        }
    }
    // Whatever the input did, the cluster must keep running (and restarting) without a trap.
    cluster.tick(2)
    for id in ids { cluster.restart(id) }
    cluster.tick(2)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRaft(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    var script = Script(bytes: UnsafeRawBufferPointer(start: data, count: size))
    run(&script)
    return 0
}
