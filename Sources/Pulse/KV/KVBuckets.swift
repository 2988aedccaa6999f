// KV/KVBuckets.swift — the cluster's JetStream KV buckets over libnats
// (issue 21, `-election nats-kv`): the lease bucket (`backbeat_<cluster>_lease`,
// max age = the lease TTL, key `leader`) and the timeline bucket
// (`backbeat_<cluster>`, no TTL, key `timeline`). Two buckets because a
// bucket's TTL is its stream's max age: every key of it expires.
//
// Threads: this object has its own NATS connection (libnats' own threads,
// reconnecting to any server of -nats), separate from the loop's NatsLink.
// Every blocking call — a JetStream publish with its expectation headers, a
// read of the last message — runs off the loop thread on a serial queue:
// lease operations on their own (`leaseQueue`), so a renewal never waits
// behind timeline writes or forwarded requests (`kvQueue`), each of which
// can take up to the JetStream wait; the caller hands each answer to the
// loop (the node posts it with `EventLoop.postCompletion`). The JetStream
// context and the connection are thread-safe in libnats. Watches run on
// their own threads.
//
// Operations are published by hand rather than with kvStore_Update and
// friends, because the lease needs what libnats 3.4's KV calls do not give:
// the JetStream error code of a failed compare-and-set (10071, wrong last
// sequence: a conflict, not an outage) and a delete that checks the revision
// (`KV-Operation: DEL` with Nats-Expected-Last-Subject-Sequence). A create
// first expects no message for the key; when the key's last message is a
// delete or purge marker (a hand-over), it expects that marker's revision,
// as kvStore_Create does.
import CNats
import Dispatch
import Foundation
import Glibc
import PulsePolicy
import Synchronization

/// No NATS server of -nats answered at start-up (the message is the start-up
/// line); the node retries for `-kv-start-wait-ms` (PulseNode+KV.swift).
struct KVNoServer: Error, CustomStringConvertible {
    var description: String
}

/// The buckets of one cluster. Thread-safe: calls queue on `kvQueue`.
final class KVBuckets: @unchecked Sendable {
    static let leaderKey = "leader"
    static let timelineKey = "timeline"

    let leaseBucket: String
    let timelineBucket: String
    /// The KV connection (also carries the clock pings: KVClockPing).
    let nc: OpaquePointer
    private let js: OpaquePointer
    private let leaseKV: OpaquePointer
    private let timelineKV: OpaquePointer
    private let kvQueue = DispatchQueue(label: "pulse.kv")
    /// The lease's operations only (one in flight at a time: KVLease).
    private let leaseQueue = DispatchQueue(label: "pulse.kv.lease")
    /// How long a publish or read waits for JetStream's answer.
    private let waitMs: Int64
    /// The version refusal `-kv-allow-old-server` overrode (for a warning), or nil.
    let oldServer: String?
    private let stopping = Atomic<Bool>(false)
    private var watchThreads: [Thread] = []

    /// The bucket names of `clusterId` (it must be a bucket-name token:
    /// letters, digits, `-` and `_`; `PulseConfig.validate` checks it).
    static func bucketNames(clusterId: String) -> (lease: String, timeline: String) {
        ("backbeat_\(clusterId)_lease", "backbeat_\(clusterId)")
    }

    /// Connects and creates (or opens) both buckets; blocks, so it runs
    /// before the loop starts. Throws a one-line `PulseError.startup` naming
    /// the cause: no NATS server answered, JetStream is not enabled, or the
    /// bucket cannot be made (an existing bucket with another TTL included).
    ///
    /// With `replicas` > 1 it first reads the version each server announces
    /// (KVServerInfo) and refuses one older than 2.11, whose compare-and-set
    /// is not linearizable on a replicated stream, unless `allowOldServer`
    /// (then `oldServer` holds the refusal, for a warning).
    init(
        servers: [String], clusterId: String, replicas: Int, ttlNs: Int64, waitMs: Int64 = 1_000,
        allowOldServer: Bool = false, name: String, applySecurity: (OpaquePointer?) throws -> Void
    ) throws {
        (leaseBucket, timelineBucket) = Self.bucketNames(clusterId: clusterId)
        self.waitMs = waitMs
        var versionRead = replicas <= 1 || allowOldServer
        var oldServer: String?
        if replicas > 1 {
            let check = KVServerInfo.refusal(servers: servers, replicas: replicas, timeoutMs: Int(waitMs))
            if let refusal = check.refusal {
                guard allowOldServer else { throw PulseError.startup(refusal) }
                oldServer = refusal
            }
            versionRead = versionRead || check.checked > 0
            if oldServer == nil && check.checked == 0 {
                // Allowed, but said: the version check could not be made.
                oldServer = "no NATS server of -nats announced its version (its INFO line could not be read)"
            }
        }
        self.oldServer = oldServer
        var opts: OpaquePointer?
        guard natsOptions_Create(&opts) == NATS_OK else {
            throw PulseError.startup("nats-kv: natsOptions_Create failed")
        }
        defer { natsOptions_Destroy(opts) }
        var cStrings = servers.map { strdup($0) }
        defer { for p in cStrings { free(p) } }
        _ = cStrings.withUnsafeMutableBufferPointer { buffer in
            buffer.baseAddress!.withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: buffer.count) {
                natsOptions_SetServers(opts, $0, Int32(buffer.count))
            }
        }
        _ = natsOptions_SetName(opts, name)
        _ = natsOptions_SetTimeout(opts, 2_000)
        _ = natsOptions_SetAllowReconnect(opts, true)
        _ = natsOptions_SetMaxReconnect(opts, -1)
        _ = natsOptions_SetReconnectWait(opts, 100)
        try applySecurity(opts)
        var conn: OpaquePointer?
        let status = natsConnection_Connect(&conn, opts)
        guard status == NATS_OK, let conn else {
            if status == NATS_NO_SERVER || status == NATS_TIMEOUT || status == NATS_IO_ERROR {
                throw KVNoServer(
                    description:
                        "-election nats-kv: no NATS server of -nats answered (\(Self.text(status))); the lease needs JetStream at start-up"
                )
            }
            throw PulseError.startup(
                "-election nats-kv: no NATS server of -nats answered (\(Self.text(status))); the lease needs JetStream at start-up"
            )
        }
        guard versionRead else {
            natsConnection_Destroy(conn)
            throw PulseError.startup(
                "-election nats-kv: no NATS server of -nats announced its version (its INFO line could not be read);"
                    + " the lease needs nats-server 2.11 or later with -kv-replicas \(replicas) (or -kv-allow-old-server)"
            )
        }
        var jsOpts = jsOptions()
        jsOptions_Init(&jsOpts)
        jsOpts.Wait = waitMs
        var ctx: OpaquePointer?
        guard natsConnection_JetStream(&ctx, conn, &jsOpts) == NATS_OK, let ctx else {
            natsConnection_Destroy(conn)
            throw PulseError.startup("-election nats-kv: cannot make a JetStream context")
        }
        do {
            leaseKV = try Self.bucket(ctx, leaseBucket, ttlNs: ttlNs, replicas: replicas)
            do {
                timelineKV = try Self.bucket(ctx, timelineBucket, ttlNs: 0, replicas: replicas)
            } catch {
                kvStore_Destroy(leaseKV)
                throw error
            }
        } catch {
            jsCtx_Destroy(ctx)
            natsConnection_Destroy(conn)
            throw error
        }
        nc = conn
        js = ctx
    }

    /// Creates the bucket, or opens it if it exists with the same TTL.
    private static func bucket(_ js: OpaquePointer, _ name: String, ttlNs: Int64, replicas: Int) throws -> OpaquePointer
    {
        var cfg = kvConfig()
        kvConfig_Init(&cfg)
        var kv: OpaquePointer?
        let status: natsStatus = name.withCString { bucket in
            cfg.Bucket = bucket
            cfg.History = 1
            cfg.TTL = ttlNs
            cfg.Replicas = Int32(replicas)
            cfg.StorageType = js_FileStorage
            return js_CreateKeyValue(&kv, js, &cfg)
        }
        if status == NATS_OK, let kv { return kv }
        let detail = lastError()
        if status == NATS_NO_RESPONDERS || detail.contains("not enabled") {
            throw PulseError.startup(
                "-election nats-kv: JetStream is not enabled on the NATS server (no answer from its JetStream API); start nats-server with -js (or jetstream {} in its configuration)"
            )
        }
        // An existing bucket made with other settings: open it and check its TTL.
        var existing: OpaquePointer?
        if js_KeyValue(&existing, js, name) == NATS_OK, let existing {
            var sts: OpaquePointer?
            if kvStore_Status(&sts, existing) == NATS_OK, let sts {
                defer { kvStatus_Destroy(sts) }
                if kvStatus_TTL(sts) == ttlNs { return existing }
                kvStore_Destroy(existing)
                throw PulseError.startup(
                    "-election nats-kv: bucket \(name) exists with a TTL of \(kvStatus_TTL(sts) / 1_000_000) ms, not \(ttlNs / 1_000_000) ms; delete it or use the same lease timing"
                )
            }
            kvStore_Destroy(existing)
        }
        throw PulseError.startup("-election nats-kv: cannot create KV bucket \(name): \(Self.text(status)) \(detail)")
    }

    deinit {
        close()
        kvStore_Destroy(leaseKV)
        kvStore_Destroy(timelineKV)
        jsCtx_Destroy(js)
        natsConnection_Destroy(nc)
    }

    /// Stops the watches (their threads see it within their poll) and closes
    /// the connection; queued operations answer `.notSent`.
    func close() {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        kvQueue.sync {}
        leaseQueue.sync {}
        natsConnection_Close(nc)
        for thread in watchThreads { while !thread.isFinished { usleep(1_000) } }
    }

    // MARK: the lease key

    /// Sends `op` on the lease queue; `done` runs there with the answer.
    /// `marked`: a delete carries the release marker (`KVLease.releaseMarked`).
    func lease(
        _ op: KVLeaseOp, owner: String, marked: Bool = true, done: @escaping @Sendable (KVLeaseReply) -> Void
    ) {
        leaseQueue.async { [self] in
            guard !stopping.load(ordering: .acquiring) else { return done(.notSent) }
            done(leaseNow(op, owner: owner, marked: marked))
        }
    }

    /// The blocking form of `lease` (lease queue, or tests).
    func leaseNow(_ op: KVLeaseOp, owner: String, marked: Bool = true) -> KVLeaseReply {
        let value = Array(owner.utf8)
        switch op {
        case .create:
            return Self.leaseReply(create(leaseBucket, Self.leaderKey, value))
        case .update(let last):
            return Self.leaseReply(put(leaseBucket, Self.leaderKey, value, expect: .revision(last)))
        case .delete(let last):
            // The body tells the watchers it is the holder's own hand-over
            // after its last frame came back; empty otherwise (full guard).
            let marker = marked ? KVLease.releaseMarker(claim: value) : []
            return Self.leaseReply(put(leaseBucket, Self.leaderKey, marker, expect: .revision(last), delete: true))
        case .read:
            switch last(leaseBucket, Self.leaderKey) {
            case .entry(let rev, let value?):
                return .found(revision: rev, owner: String(decoding: value, as: UTF8.self))
            case .entry(_, nil), .none: return .absent
            case .failed: return .unknown
            }
        }
    }

    private static func leaseReply(_ reply: KVWriteReply) -> KVLeaseReply {
        switch reply {
        case .written(let rev): return .written(revision: rev)
        case .conflict: return .conflict
        case .unknown: return .unknown
        case .notSent: return .notSent
        }
    }

    // MARK: the timeline key

    /// Writes the timeline record with compare-and-set on `lastRevision`
    /// (0: create); `done` runs on the KV queue.
    func writeTimeline(_ value: [UInt8], lastRevision: UInt64, done: @escaping @Sendable (KVWriteReply) -> Void) {
        kvQueue.async { [self] in
            guard !stopping.load(ordering: .acquiring) else { return done(.notSent) }
            done(writeTimelineNow(value, lastRevision: lastRevision))
        }
    }

    func writeTimelineNow(_ value: [UInt8], lastRevision: UInt64) -> KVWriteReply {
        lastRevision == 0
            ? create(timelineBucket, Self.timelineKey, value)
            : put(timelineBucket, Self.timelineKey, value, expect: .revision(lastRevision))
    }

    /// Puts `value` at `key` of the lease bucket, where it expires with the
    /// lease's TTL (forwarded requests and answers); best effort, off the loop.
    func putExpiring(key: String, value: [UInt8]) {
        kvQueue.async { [self] in
            guard !stopping.load(ordering: .acquiring) else { return }
            var rev: UInt64 = 0
            _ = value.withUnsafeBufferPointer { kvStore_Put(&rev, leaseKV, key, $0.baseAddress, Int32($0.count)) }
        }
    }

    // MARK: watching

    /// Watches `key` of the lease bucket (`lease`) or the timeline bucket on
    /// a thread of its own; `seen` gets every entry from the current one on
    /// (only later ones with `updatesOnly`), on that thread. `key` may end in
    /// `>` (every key below). Returns false when the watch cannot start.
    func watch(
        lease: Bool, key: String? = nil, updatesOnly: Bool = false, seen: @escaping @Sendable (KVWatched) -> Void
    ) -> Bool {
        var opts = kvWatchOptions()
        kvWatchOptions_Init(&opts)
        var watcher: OpaquePointer?
        let key = key ?? (lease ? Self.leaderKey : Self.timelineKey)
        guard kvStore_Watch(&watcher, lease ? leaseKV : timelineKV, key, &opts) == NATS_OK, let watcher else {
            return false
        }
        let box = WatcherBox(watcher)
        let thread = Thread { [self] in
            var initialDone = !updatesOnly
            while !stopping.load(ordering: .acquiring) {
                var entry: OpaquePointer?
                let status = kvWatcher_Next(&entry, box.watcher, 200)
                guard status == NATS_OK, let entry else {
                    if status != NATS_OK && status != NATS_TIMEOUT { usleep(50_000) }
                    if status == NATS_OK { initialDone = true }  // nil entry: the initial values are all delivered
                    continue
                }
                guard initialDone else {
                    kvEntry_Destroy(entry)
                    continue
                }
                let entryKey = kvEntry_Key(entry).map { String(cString: $0) } ?? ""
                let rev = kvEntry_Revision(entry)
                let op = kvEntry_Operation(entry)
                var value: [UInt8]? = nil
                var marker: [UInt8] = []
                let n = Int(kvEntry_ValueLen(entry))
                if op == kvOp_Put {
                    if let p = kvEntry_Value(entry) {
                        value = Array(UnsafeRawBufferPointer(start: p, count: n))
                    } else {
                        value = []
                    }
                } else if let p = kvEntry_Value(entry), n > 0 {
                    marker = Array(UnsafeRawBufferPointer(start: p, count: min(n, KVWatched.maxMarkerBytes)))
                }
                kvEntry_Destroy(entry)
                seen(
                    KVWatched(
                        revision: rev, value: value, key: entryKey, purged: op == kvOp_Purge, markerBody: marker))
            }
            kvWatcher_Stop(box.watcher)
            kvWatcher_Destroy(box.watcher)
        }
        thread.name = "pulse-kv-watch"
        thread.start()
        watchThreads.append(thread)
        return true
    }

    // MARK: publishing with expectations (KV queue)

    private enum Expect {
        case noMessage
        case revision(UInt64)
    }

    private enum Last {
        /// The key's last message: a value, or a delete/purge marker (nil).
        case entry(UInt64, [UInt8]?)
        case none
        case failed
    }

    private func create(_ bucket: String, _ key: String, _ value: [UInt8]) -> KVWriteReply {
        let first = put(bucket, key, value, expect: .noMessage)
        guard first == .conflict else { return first }
        // The key's last message may be a delete marker (a hand-over): a
        // create on top of it expects that marker's revision.
        switch last(bucket, key) {
        case .entry(let rev, nil): return put(bucket, key, value, expect: .revision(rev))
        case .entry: return .conflict
        case .none: return put(bucket, key, value, expect: .noMessage)  // expired meanwhile
        case .failed: return .unknown
        }
    }

    private func put(
        _ bucket: String, _ key: String, _ value: [UInt8], expect: Expect, delete: Bool = false
    ) -> KVWriteReply {
        var msg: OpaquePointer?
        let subject = "$KV.\(bucket).\(key)"
        let created = value.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) {
                natsMsg_Create(&msg, subject, nil, $0.baseAddress, Int32(buffer.count))
            }
        }
        guard created == NATS_OK, let msg else { return .notSent }
        defer { natsMsg_Destroy(msg) }
        if delete { _ = natsMsgHeader_Set(msg, "KV-Operation", "DEL") }
        var po = jsPubOptions()
        jsPubOptions_Init(&po)
        po.MaxWait = waitMs
        switch expect {
        case .noMessage: po.ExpectNoMessage = true
        case .revision(let rev): po.ExpectLastSubjectSeq = rev
        }
        var ack: UnsafeMutablePointer<jsPubAck>?
        var jerr = jsErrCode(rawValue: 0)
        let status = js_PublishMsg(&ack, js, msg, &po, &jerr)
        defer { if let ack { jsPubAck_Destroy(ack) } }
        if status == NATS_OK, let ack { return .written(revision: ack.pointee.Sequence) }
        return Self.failure(status, jerr)
    }

    /// The last message of `key`, read from the bucket's stream.
    private func last(_ bucket: String, _ key: String) -> Last {
        var msg: OpaquePointer?
        var jerr = jsErrCode(rawValue: 0)
        var jsOpts = jsOptions()
        jsOptions_Init(&jsOpts)
        jsOpts.Wait = waitMs
        let status = js_GetLastMsg(&msg, js, "KV_\(bucket)", "$KV.\(bucket).\(key)", &jsOpts, &jerr)
        if jerr == JSNoMessageFoundErr || status == NATS_NOT_FOUND { return .none }
        guard status == NATS_OK, let msg else { return .failed }
        defer { natsMsg_Destroy(msg) }
        let rev = natsMsg_GetSequence(msg)
        var op: UnsafePointer<CChar>?
        if natsMsgHeader_Get(msg, "KV-Operation", &op) == NATS_OK, op != nil { return .entry(rev, nil) }
        let n = Int(natsMsg_GetDataLength(msg))
        guard let data = natsMsg_GetData(msg) else { return .entry(rev, []) }
        return .entry(rev, Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(data), count: n)))
    }

    /// How a failed publish ended: a conflict, certainly not stored, or unknown.
    private static func failure(_ status: natsStatus, _ jerr: jsErrCode) -> KVWriteReply {
        if jerr == JSStreamWrongLastSequenceErr { return .conflict }
        if jerr.rawValue != 0 { return .notSent }  // the server answered with an error: not stored
        switch status {
        case NATS_NO_RESPONDERS, NATS_CONNECTION_CLOSED, NATS_CONNECTION_DISCONNECTED, NATS_INSUFFICIENT_BUFFER:
            return .notSent
        default:
            return .unknown  // a timeout: the write may have been stored
        }
    }

    private static func lastError() -> String {
        nats_GetLastError(nil).map { String(cString: $0) } ?? ""
    }

    private static func text(_ status: natsStatus) -> String { String(cString: natsStatus_GetText(status)) }
}

/// A watcher handle carried into its thread.
private final class WatcherBox: @unchecked Sendable {
    let watcher: OpaquePointer
    init(_ watcher: OpaquePointer) { self.watcher = watcher }
}
