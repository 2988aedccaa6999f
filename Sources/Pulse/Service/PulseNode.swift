// Service: wires one pulse node together and runs it.
//
// One commit path. With -peers, a Raft cluster (Cluster/): the timeline is
// the replicated log, only the leader holding its lease publishes, and tempo
// changes commit through the log. Without -peers, a single node is the same
// with one voter (ClusterCore.campaignIfAlone: it leads at once, its own
// synced append commits; no transport), its log in `<data-dir>/raft`; an
// `epoch.json` of a release before is migrated into it at start
// (EpochMigration). With -election nats-kv, the KV lease (KV/).
//
// Start-up order: data dir and timeline → signals blocked (before any thread
// exists, so only the loop's signalfd sees them) → loop → real-time settings
// → NATS (connects in the background) → beat driver → loop runs until
// SIGINT/SIGTERM → (leader: hand leadership over) → beats stop, NATS closes.
// SIGHUP re-reads the Raft TLS certificate, key and CA, and the log level
// from -config on a helper thread and applies them on the loop (never stops
// the node, never touches the beat timer, never reads a file on the loop).
import CLoop
import Foundation
import Glibc
import Logging
import PulseCore
import PulsePolicy

/// One running pulse node.
final class PulseNode: LoopHandler {
    let config: PulseConfig
    let nodeId: String
    let logger: Logger
    let loop: EventLoop
    let nats: NatsLink
    /// Consumer requests and their replies, on a NATS connection of their
    /// own (issue 20): no reply ever queues ahead of a frame on `nats`.
    let requests: NatsLink
    let beats: BeatDriver
    let metrics = PulseMetrics()
    /// Inputs refused at the boundary, every surface (requirements §10).
    let rejected = RejectedInput()
    let tempo: TempoController
    private(set) var admin: AdminServer?
    /// The Raft cluster: with -peers, or a one-voter one for a single node
    /// (`alone`); nil only with -election nats-kv.
    private(set) var cluster: ClusterNode?
    /// A single node: a lone voter (no -peers, no nats-kv).
    let alone: Bool
    /// The JetStream KV lease, with -election nats-kv (issue 21).
    private(set) var kv: KVNode?
    /// Raft mutual TLS, when -raft-tls-* are given (reloaded on SIGHUP).
    private(set) var raftTLS: RaftTLS?
    /// A SIGHUP reload is being read off the loop / another was asked for meanwhile.
    private var reloadStartedMonoNs: Int64?
    private var reloadAgain = false
    private var stopRequestedMonoNs: Int64?
    /// Bumped when the cluster's voter set changes: the beat subscription
    /// rebuilds its echo policy's publishers when it sees a new value.
    var membersGeneration: UInt64 = 0
    var stopRequested: Bool { stopRequestedMonoNs != nil }
    /// SIGTERM of a leader: the hand-over waits for this node's next frame
    /// to come back on the subject (PulseNode+Admin `handleEcho`), so the
    /// successor's shorter hand-over guard holds (BeatDriver.handOverGuardNs).
    var handOverPending = false
    /// `POST /leader/transfer`: the voter to hand leadership to (`noNode`:
    /// the best follower) once this leader's next frame came back on the
    /// subject, as a stop does (so the successor has the rest of a period
    /// to take over: no beat missed), and since when (monotonic ns).
    var adminTransfer: (target: UInt64, sinceMonoNs: Int64)?
    private let dataDir: DataDir
    /// This node's flags, until it applies the committed shape.
    private let localShape: TimelineShape
    /// The committed timeline shape (§12): what frames, `/timeline`, the
    /// live view and backups use. A node runs only while its -bar/-phases
    /// equal it (it refuses to start or stops otherwise), so the beat
    /// driver, built before a joining node knows it, encodes the same.
    var shape: TimelineShape { cluster?.committedShape ?? localShape }
    private var signalToken: UInt32 = 0
    private var housekeepingToken: UInt32 = 0
    private var lastSummary = BeatStats()
    private var lastChecked = BeatStats()
    private var housekeepingTicks: UInt64 = 0

    init(config: PulseConfig, environment: [String: String]) throws {
        self.config = config
        var logger = Logger(label: "pulse")
        let dataPath =
            config.dataDir.isEmpty ? ".backbeat/\(config.clusterId)-\(config.adminPort)" : config.dataDir
        dataDir = try DataDir(path: dataPath, rejected: rejected, sync: metrics.diskSync)
        nodeId = try dataDir.nodeId(preferring: config.nodeId)
        logger[metadataKey: "node"] = "\(nodeId)"
        self.logger = logger

        let clustered = !config.peers.isEmpty
        // A single node (no -peers, no nats-kv) is a one-voter cluster: the
        // same core, its Raft log in the data dir, no transport.
        alone = !clustered && !config.natsKV
        let peers = try Self.peerList(config: config, nodeId: nodeId)
        let flags: TimelineShape
        do {
            flags = try TimelineShape(bar: config.bar, phases: config.phases)
        } catch {
            throw PulseError.config("-bar/-phases: \(error)")  // PulseConfig.validate refused these already
        }
        if alone {
            // A data dir of a release before (epoch.json, no Raft state) is
            // migrated now, before any thread or socket; a refusal stops here.
            try EpochMigration.prepare(
                dataDir: dataDir, config: config, flags: flags, rejected: rejected, sync: metrics.diskSync,
                logger: logger)
        }
        // The timeline is the core's (committed entries); the placeholder is
        // what `beats.timeline` shows before the committed epoch.
        let placeholder = Timeline(
            epoch: TempoEpoch(startBeat: 0, startNs: 0, bpm: Int64(config.bpm)), bar: flags.bar,
            phaseCount: flags.phases.count)
        localShape = flags

        loop = try EventLoop()
        signal(SIGPIPE, SIG_IGN)
        nats = NatsLink(
            url: config.natsURL, name: "pulse \(nodeId)", loop: loop, logger: logger,
            security: NatsSecurity(config: config))
        requests = NatsLink(
            url: config.natsURL, name: "pulse \(nodeId) requests", loop: loop, logger: logger,
            security: NatsSecurity(config: config), role: .requests)
        if !config.signKey.isEmpty {
            nats.signer = try PublicationSigner(keyFile: config.signKey)
            requests.signer = nats.signer
            logger.info("publications signed", metadata: ["key_id": "\(nats.signer!.keyId)"])
        }
        beats = try BeatDriver(
            loop: loop, nats: nats, logger: logger, timeline: nil, placeholder: placeholder,
            clusterId: config.clusterId,
            phases: localShape.phases, nodeId: nodeId, subject: config.beatSubject,
            maxOffsetMs: Int64(config.maxOffsetMs), spinMaxUs: config.spinMaxUs)
        beats.observer = metrics
        tempo = TempoController(config: config, beats: beats, nats: nats, metrics: metrics, logger: logger)
        if let peers, config.raftTLSEnabled {
            raftTLS = try RaftTLS(
                certPath: config.raftTLSCert, keyPath: config.raftTLSKey, caPath: config.raftTLSCA, peers: peers)
        }
        if let peers {
            try attachCluster(peers: peers, flags: flags)
        } else if config.natsKV {
            kv = try startKV(flags: flags)
        }
        metrics.exportElectionStrategy(config.natsKV ? "nats-kv" : clustered ? "raft" : "single")
        signalToken = try loop.watchSignals([SIGINT, SIGTERM, SIGHUP], handler: self)
        housekeepingToken = try loop.makeTimer(clock: CLOCK_MONOTONIC, priority: false, handler: self)
        beats.echoesMayWait = { [unowned self] in
            !handOverPending && adminTransfer == nil && (admin?.events?.streamCount ?? 0) == 0
        }
    }

    /// -peers parsed; a lone voter's list for a single node; nil with nats-kv.
    private static func peerList(config: PulseConfig, nodeId: String) throws -> PeerList? {
        if !config.peers.isEmpty {
            return try PeerList.parse(peers: config.peers, nodeId: nodeId, raftBind: config.raftBind)
        }
        return config.natsKV ? nil : PeerList.alone(nodeId: nodeId)
    }

    /// Builds the Raft cluster (-peers, or one voter) and hands it the committed timeline
    /// and the tempo commit path.
    private func attachCluster(peers: PeerList, flags: TimelineShape) throws {
        // Degrade after a few beats without a leader, but never before a
        // few election timeouts (an election in progress is not an outage).
        let periodNs = 60_000_000_000 / Int64(config.bpm)
        var timing = ClusterTiming()
        timing.tickNs = Int64(config.heartbeatMs) * 1_000_000
        timing.electionTicks = config.electionTimeoutMs / config.heartbeatMs
        timing.compactEvery = UInt64(config.raftCompactEvery)
        timing.degradeAfterNs =
            config.degradeAfterMs > 0
            ? Int64(config.degradeAfterMs) * 1_000_000
            : max(3 * periodNs, 3 * Int64(config.electionTimeoutMs) * 1_000_000)
        let cluster = try ClusterNode(
            peers: peers, timing: timing, dataDir: dataDir.path,
            bootstrapBpm: config.bootstrap ? Int64(config.bpm) : nil, shape: flags, loop: loop,
            rejected: rejected, logger: logger, tls: raftTLS, joining: config.join, sync: metrics.diskSync,
            alone: alone)
        if alone, !(cluster.isVoter && cluster.voters.count == 1) {
            // Its Raft id derives from the node id: a data dir written under
            // another id, or by a cluster node, is not this lone voter's.
            throw PulseError.config(
                "data dir \(dataDir.path) holds the Raft log of a cluster of \(cluster.voters.count) voter(s) without this node as its only voter (node id \(nodeId)): start it with its -peers, or with the -node-id it was written with"
            )
        }
        self.cluster = cluster
        cluster.onEvent = { [unowned self] event in self.clusterEvent(event) }
        beats.shell.core = cluster.core  // the committed timeline's one owner
        tempo.canCommit = { [unowned cluster] in cluster.isLeader }
        tempo.caughtUp = { [unowned cluster] in cluster.core.appliedTermStart }
        tempo.leaderKnown = { [unowned cluster] in cluster.leaderPeer != nil }
        tempo.commit = { [unowned cluster] change, justification, done in
            cluster.propose(.tempo(atBeat: change.atBeat, bpm: change.bpm, justification: justification)) {
                outcome in
                switch outcome {
                case .committed: done(nil)
                case .refused: done("no_leader")
                case .unknown: done("outcome_unknown")  // fault 4: it may still take effect
                }
            }
        }
    }

    /// Applies -cpu, -rt-priority and -mlock to the calling (loop) thread.
    /// Failures are fatal: an operator who asked for real-time gets it or a reason.
    func applyRealtime() throws {
        if let cpu = config.cpu {
            let rc = cloop_pin_to_cpu(Int32(cpu))
            guard rc == 0 else { throw PulseError.startup("-cpu \(cpu): \(String(cString: strerror(-rc)))") }
        }
        if config.rtPriority > 0 {
            let rc = cloop_set_fifo_priority(Int32(config.rtPriority))
            guard rc == 0 else {
                throw PulseError.startup(
                    "-rt-priority \(config.rtPriority): \(String(cString: strerror(-rc))) (needs root or CAP_SYS_NICE)")
            }
            _ = cloop_set_timer_slack_ns(1)
        }
        if config.lockMemory {
            let rc = cloop_lock_memory()
            guard rc == 0 else { throw PulseError.startup("-mlock: \(String(cString: strerror(-rc)))") }
        }
    }

    /// Runs until SIGINT or SIGTERM.
    func run() throws {
        loop.bindToCurrentThread()
        // Room for bursts of clients: fds are cheap, and the loop's table is 1024 slots.
        var limits = AdminLimits()
        limits.maxConnections = 256
        let server = AdminServer(
            loop: loop, backend: self, host: config.adminBind, port: config.adminPort, authToken: config.adminToken,
            limits: limits, logger: logger, rejected: rejected, live: self)
        do {
            try server.start()
        } catch {
            throw PulseError.startup("admin API on \(config.adminBind):\(config.adminPort): \(error)")
        }
        admin = server
        subscribeControl()
        subscribeBeats()
        startTimelineService()
        try enableForwarding()
        try nats.start()
        try requests.start()
        try applyRealtime()
        beats.start()  // a no-op: beats start with the committed epoch (the core's events)
        try cluster?.start()
        try kv?.start()
        // Once a second, at the end of a beat's turn when one comes within
        // 200 ms of it (no wake of its own at tempos above 300 bpm).
        try loop.armCoalescing(housekeepingToken, intervalNs: 1_000_000_000, earlyNs: 200_000_000)
        logger.info(
            "pulse running",
            metadata: [
                "cluster": "\(config.clusterId)", "subject": "\(config.beatSubject)",
                "bpm": "\(beats.timeline.epoch.bpm)",
                "next_beat": "\(beats.nextBeat)", "admin_port": "\(admin?.boundPort ?? 0)",
                "cpu": "\(config.cpu.map(String.init) ?? "any")",
                "allocator": "\(cloop_allocator_version().map { String(cString: $0) } ?? "system")",
            ])
        loop.run()
        cluster?.stop()
        kv?.stop()
        beats.stop()
        admin?.stop()
        requests.close()
        nats.close()
        logger.info("pulse stopped", metadata: ["beats_published": "\(beats.stats.beatsPublished)"])
        // The committed shape differs from the flags (§12): a non-zero exit with the reason.
        if let refusal = cluster?.refusal ?? kv?.refusal { throw refusal }
    }

    func loopEvent(token: UInt32, events: UInt32) {
        if token == signalToken {
            let signo = loop.readSignal(signalToken)
            if signo == SIGHUP {
                reloadOffLoop()
            } else if signo > 0 {
                logger.info("stopping", metadata: ["signal": signo == SIGTERM ? "SIGTERM" : "SIGINT"])
                // A leader hands over first so that no beat is missed; the
                // loop keeps turning until it is a follower (at most 3 s).
                if stopRequestedMonoNs == nil, !alone, cluster?.isLeader ?? kv?.isHolder ?? false {
                    stopRequestedMonoNs = cloop_monotonic_ns()
                    hearEchoesPromptly()
                    handOverPending = true
                    logger.info("handing leadership over after the next beat, before stopping")
                } else {
                    loop.requestStop()
                }
            }
        } else if token == housekeepingToken {
            loop.readTimer(housekeepingToken)
            housekeeping()
        }
    }

    /// Before a hand-over or an admin transfer starts waiting for the echo
    /// of the next frame: what already waited in the socket (a timer-only
    /// leader reads at its turns: `NatsLink.deferReads`) is heard now, as
    /// older frames, and reads are prompt again, so that only a frame
    /// published after the request can start it (review of 2026-12-07 F1).
    func hearEchoesPromptly() {
        nats.deferReads(false)
    }

    /// Starts the graceful hand-over (once); stops now when it cannot start.
    /// `echoed`: the last frame came back (false: handing over anyway after
    /// the wait; in nats-kv mode the successor then takes the full guard).
    func handOver(echoed: Bool = true) {
        guard handOverPending else { return }
        handOverPending = false
        if let cluster, cluster.transferLeadership() {
            logger.info("handing leadership over before stopping")
        } else if let kv, kv.release(echoed: echoed) {
            logger.info("releasing the KV lease before stopping")
        } else {
            loop.requestStop()
        }
    }

    /// SIGHUP: the `-config` file and the Raft TLS files are read and parsed
    /// on a helper thread (unpinned, normal priority: a slow disk never
    /// delays a beat), and the results are applied on the loop thread. One
    /// reload runs at a time; SIGHUPs during it cause one more afterwards
    /// (files changed meanwhile are read then), so a signal storm queues no work.
    private func reloadOffLoop() {
        guard reloadStartedMonoNs == nil else {
            reloadAgain = true
            // A reload stuck on its files (a FIFO, a hung network mount) must
            // not swallow later SIGHUPs silently.
            if let started = reloadStartedMonoNs, cloop_monotonic_ns() &- started > 5_000_000_000 {
                logger.warning(
                    "SIGHUP: the previous reload is still reading its files; this one runs after it",
                    metadata: ["seconds": "\((cloop_monotonic_ns() &- started) / 1_000_000_000)"])
            }
            return
        }
        reloadStartedMonoNs = cloop_monotonic_ns()
        let config = self.config
        let tls = raftTLS?.loader
        let loop = self.loop
        DispatchQueue.global(qos: .utility).async {
            ThreadPlacement.placeCurrentHelperThread()
            let level = config.reloadLogLevel()
            let loaded = tls.map { loader in Result { try loader.load() } }
            loop.postCompletion { [weak self] in
                guard let self else {
                    if case .success(let fresh)? = loaded { fresh.discard() }
                    return
                }
                self.applyLogLevel(level)
                self.applyCertificates(loaded)
                self.reloadStartedMonoNs = nil
                if self.reloadAgain {
                    self.reloadAgain = false
                    self.reloadOffLoop()
                }
            }
        }
    }

    /// SIGHUP: the log level from -config, unless the command line or the
    /// environment set it. A bad file keeps the current level (one line).
    private func applyLogLevel(_ reload: PulseConfig.LogLevelReload) {
        switch reload {
        case .changed(let level):
            LogSetup.level = LineLogHandler.level(level)
            logger.info("SIGHUP: log level set", metadata: ["level": "\(level)"])
        case .unchanged(let why):
            logger.info("SIGHUP: log level kept: \(why)")
        case .failed(let reason):
            logger.error("SIGHUP: log level kept, -config not usable: \(reason)")
        }
    }

    /// SIGHUP: installs the re-read Raft TLS files. New connections use the
    /// new certificate; established ones keep theirs. A failure keeps the old
    /// files' context and is one log line: rotation never stops a node.
    private func applyCertificates(_ loaded: Result<RaftTLS.Loaded, Error>?) {
        guard let raftTLS, let loaded else {
            logger.info("SIGHUP: no certificates to reload")
            return
        }
        switch loaded {
        case .success(let fresh):
            raftTLS.install(fresh)
            logger.info("SIGHUP: Raft TLS certificates reloaded", metadata: ["names": "\(raftTLS.ownNames)"])
        case .failure(let error):
            logger.error("SIGHUP: Raft TLS certificates not reloaded, keeping the previous ones: \(error)")
        }
    }

    /// Once a second, off the beat path: log a summary every 10 s and warn
    /// about anything the beat path counted.
    private func housekeeping() {
        housekeepingTicks &+= 1
        nats.expireRequests(nowMonoNs: cloop_monotonic_ns())
        if let since = stopRequestedMonoNs {
            let waited = cloop_monotonic_ns() - since
            let t = beats.timeline
            let periodNs = t.instantNs(ofBeat: beats.nextBeat + 1) - t.instantNs(ofBeat: beats.nextBeat)
            // No echo of our frame within a period and a second: hand over anyway.
            if handOverPending && waited > periodNs + 1_000_000_000 { handOver(echoed: false) }
            if !(cluster?.isLeader ?? kv?.holdsOrReleases ?? false) || waited > periodNs + 3_000_000_000 {
                loop.requestStop()
            }
        }
        if let transfer = adminTransfer {
            let t = beats.timeline
            let periodNs = t.instantNs(ofBeat: beats.nextBeat + 1) - t.instantNs(ofBeat: beats.nextBeat)
            // No echo of our frame within a period and a second: hand over anyway.
            if cloop_monotonic_ns() - transfer.sinceMonoNs > periodNs + 1_000_000_000 { startAdminTransfer() }
        }
        let now = beats.stats
        if now.hotPathAllocatedBytes != lastChecked.hotPathAllocatedBytes {
            logger.warning(
                "beat path allocated",
                metadata: [
                    "bytes": "\(now.hotPathAllocatedBytes - lastChecked.hotPathAllocatedBytes)",
                    "last_beat": "\(now.lastAllocatingBeat)",
                ])
        }
        if now.beatsMissed != lastChecked.beatsMissed {
            logger.warning("beats missed", metadata: ["count": "\(now.beatsMissed - lastChecked.beatsMissed)"])
        }
        lastChecked = now
        guard housekeepingTicks % 10 == 0 else { return }
        logger.info(
            "beat summary",
            metadata: [
                "published": "\(now.beatsPublished)", "unpublished": "\(now.beatsUnpublished)",
                "missed": "\(now.beatsMissed)", "last_beat": "\(now.lastBeatIndex)",
                "last_jitter_us": "\(now.lastJitterNs / 1000)", "max_jitter_us": "\(now.maxJitterNs / 1000)",
                "late": "\(now.lateBeats)", "clock_steps": "\(now.clockSteps)",
                "followed": "\(beats.beatsFollowed)",
                "nats_connected": "\(nats.isConnected)", "nats_reconnects": "\(nats.stats.reconnects)",
            ])
        lastSummary = now
    }
}
