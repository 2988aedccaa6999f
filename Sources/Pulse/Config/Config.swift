// Config: the command line, the environment and their validation.
//
// Every flag is accepted with one dash (`-bpm 12`, as the seed's users type
// them) and with two (`--bpm 12`); `-flag=value` works too. Every flag has an
// environment variable, `BACKBEAT_<FLAG>` (`-raft-bind` → BACKBEAT_RAFT_BIND;
// the seed's three keep their names: BACKBEAT_CLUSTER_ID, BACKBEAT_DATA_DIR,
// BACKBEAT_LOG_LEVEL), and `-config FILE` reads `BACKBEAT_<FLAG>=value` lines
// (the format of a systemd EnvironmentFile or a compose env_file).
// Precedence: the command line, then the environment, then the file, then
// the default. Invalid configuration is one line on stderr and exit status 2.
//
// How: the file and the environment become arguments placed before the
// command line's (`--bpm 12`), and ArgumentParser keeps the last value of a
// repeated option, so a flag wins by position. Each such value is parsed on
// its own first, so a bad one is refused naming its variable.
import ArgumentParser
import Foundation
import Glibc
import PulseCore

/// Errors that stop the pulse before it serves: one line each.
public enum PulseError: Error, CustomStringConvertible {
    case config(String)
    case startup(String)

    public var description: String {
        switch self {
        case .config(let message), .startup(let message): return message
        }
    }
}

/// Validated configuration of one pulse node.
public struct PulseConfig: Sendable {
    var clusterId = "chorus-aus-01"
    var nodeId = ""
    var bpm = 12
    var bar = 8
    var phases = ["plan", "work", "review"]
    var minBpm = 4
    var maxBpm = 24
    var natsURL = "nats://localhost:4222"
    var adminPort = 8080
    var raftBind = "127.0.0.1:0"
    var bootstrap = false
    /// -join: this node joins a running cluster (etcd's
    /// initial-cluster-state=existing): empty log, not a voter, never
    /// campaigns or bootstraps; it waits for the leader to add it.
    var join = false
    var peers: [String] = []
    var dataDir = ""
    var cpu: Int? = nil
    var rtPriority = 0
    var lockMemory = false
    var spinMaxUs = 2000
    var maxOffsetMs = 500
    var logLevel = "info"
    var logFormat = "text"
    /// Where the log level came from; SIGHUP re-reads it from `configFile`
    /// only when it came from there (or from nowhere: the default).
    var logLevelPinned = false
    /// `-config`: the file of `BACKBEAT_<FLAG>=value` lines, or empty.
    var configFile = ""
    /// Bearer token required on state-changing admin requests (nil: none).
    var adminToken: String? = nil
    /// Raft: the leader's heartbeat interval (one tick of the core).
    var heartbeatMs = 50
    /// Raft: followers elect after a random timeout in [this, 2×this).
    var electionTimeoutMs = 300
    /// No leader for this long → degradation mode (0: max(3 beats, 3 election timeouts)).
    var degradeAfterMs = 0
    /// Raft: snapshot the state machine and drop the log after this many applied entries.
    var raftCompactEvery = 64
    /// Raft over mutual TLS 1.3: this node's certificate chain, key and the
    /// cluster's CA (PEM files; all three or none). Re-read on SIGHUP.
    var raftTLSCert = ""
    var raftTLSKey = ""
    var raftTLSCA = ""
    /// -raft-insecure: plain-TCP Raft on a non-loopback -raft-bind (refused
    /// without it: anyone who reaches the port could rewrite the membership).
    var raftInsecure = false
    /// NATS: a creds file (JWT + nkey seed), an nkey seed file, a CA for the
    /// server's certificate, and a client certificate and key (PEM).
    var natsCreds = ""
    var natsNkey = ""
    var natsCA = ""
    var natsCert = ""
    var natsKey = ""
    /// `-sign-key`: a PEM Ed25519 private key; frames, timeline publications
    /// and replies, and tempo announcements are signed with it (empty: unsigned).
    var signKey = ""
    /// The admin HTTP listener's IPv4 address (loopback unless told otherwise).
    var adminBind = "127.0.0.1"
    /// Names a request's `Host` may give besides localhost, the host name and
    /// IP literals (DNS names or a proxy's name; AdminBrowserGuard).
    var adminHosts: [String] = []
    /// -election: `raft` (the default) or `nats-kv`, a JetStream KV lease (issue 21).
    var election = "raft"
    /// -kv-replicas: the KV buckets' replicas in nats-kv mode (3 on a 3-server JetStream cluster).
    var kvReplicas = 1

    var natsKV: Bool { election == "nats-kv" }
    /// -kv-start-wait-ms: nats-kv: how long start-up retries while no NATS
    /// server of -nats answers (servers started after the pulse), 0: no retry.
    var kvStartWaitMs = 30_000
    /// -kv-allow-old-server: nats-kv with -kv-replicas > 1: start on a
    /// nats-server older than 2.11 (its compare-and-set is not linearizable
    /// on replicated streams: KVLeaseServerVersion.swift), with a warning.
    var kvAllowOldServer = false
    var raftTLSEnabled: Bool { !raftTLSCert.isEmpty }

    /// This cluster's NATS subjects (PulseCore `BackbeatSubjects`).
    var subjects: BackbeatSubjects { BackbeatSubjects(clusterId: clusterId) }
    var beatSubject: String { subjects.beat }
    var controlSubject: String { subjects.control }

    /// Checks every rule; the first violation is the error.
    func validate() throws {
        func fail(_ message: String) throws -> Never { throw PulseError.config(message) }
        try Self.checkToken(clusterId, what: "-cluster")
        if !nodeId.isEmpty { try Self.checkToken(nodeId, what: "-node-id") }
        if minBpm < 1 { try fail("-min-bpm must be at least 1 (got \(minBpm))") }
        if maxBpm > 6000 { try fail("-max-bpm must be at most 6000 (got \(maxBpm))") }
        if minBpm > maxBpm { try fail("-min-bpm \(minBpm) is above -max-bpm \(maxBpm)") }
        if bpm < minBpm || bpm > maxBpm { try fail("-bpm \(bpm) is outside [-min-bpm \(minBpm), -max-bpm \(maxBpm)]") }
        if bar < 1 || bar > 1024 { try fail("-bar must be between 1 and 1024 (got \(bar))") }
        if phases.isEmpty || phases.contains(where: \.isEmpty) {
            try fail("-phases must be a comma-separated list of non-empty names")
        }
        if phases.count > bar { try fail("-phases has \(phases.count) names but a bar has only \(bar) beats") }
        if phases.contains(where: { $0.utf8.count > 64 }) { try fail("-phases names must be at most 64 bytes") }
        if !(0...65535).contains(adminPort) { try fail("-admin-port must be between 0 and 65535 (got \(adminPort))") }
        _ = try NatsLink.serverList(natsURL)  // one line naming the bad entry
        try validateElection()
        if let cpu, !Self.allowedCPUs().contains(cpu) {
            let allowed = Self.allowedCPUs().map(String.init).joined(separator: ",")
            try fail("-cpu \(cpu) is not an online CPU (\(allowed))")
        }
        if !(0...99).contains(rtPriority) { try fail("-rt-priority must be 0 (off) or 1...99 (got \(rtPriority))") }
        if !(0...100_000).contains(spinMaxUs) {
            try fail("-spin-max-us must be between 0 and 100000 (got \(spinMaxUs))")
        }
        if !(1...60_000).contains(maxOffsetMs) { try fail("-max-offset-ms must be between 1 and 60000") }
        if LogLevelName(rawValue: logLevel) == nil {
            try fail("-log-level (BACKBEAT_LOG_LEVEL) must be one of debug, info, warn, error (got '\(logLevel)')")
        }
        if logFormat != "text" && logFormat != "json" { try fail("-log-format must be text or json") }
        if !(5...5000).contains(heartbeatMs) { try fail("-heartbeat-ms must be between 5 and 5000") }
        if electionTimeoutMs < 4 * heartbeatMs || electionTimeoutMs > 60_000 {
            try fail("-election-timeout-ms must be at least 4 × -heartbeat-ms (\(4 * heartbeatMs)) and at most 60000")
        }
        if !(1...1_000_000).contains(raftCompactEvery) { try fail("-raft-compact-every must be between 1 and 1000000") }
        if degradeAfterMs < 0 || degradeAfterMs > 86_400_000 {
            try fail("-degrade-after-ms must be between 0 and 86400000")
        }
        if join && bootstrap {
            try fail(
                "-join and -bootstrap exclude each other: -bootstrap starts a new cluster, -join enters a running one")
        }
        if join && peers.isEmpty { try fail("-join needs -peers (the running cluster's members, and this node)") }
        if !peers.isEmpty {
            _ = try PeerList.parse(peers: peers, nodeId: nodeId, raftBind: raftBind)
        }
        try validateSecurity()
    }

    /// -election and what nats-kv mode excludes: the NATS servers elect, so
    /// no Raft peers; the cluster id names the KV buckets (KVBuckets).
    func validateElection() throws {
        func fail(_ message: String) throws -> Never { throw PulseError.config(message) }
        guard election == "raft" || election == "nats-kv" else {
            try fail("-election must be raft or nats-kv (got '\(election)')")
        }
        if !(1...5).contains(kvReplicas) { try fail("-kv-replicas must be between 1 and 5 (got \(kvReplicas))") }
        if !(0...600_000).contains(kvStartWaitMs) {
            try fail("-kv-start-wait-ms must be between 0 and 600000 (got \(kvStartWaitMs))")
        }
        guard natsKV else { return }
        if !peers.isEmpty || join {
            try fail("-election nats-kv takes no -peers or -join: the pulses elect through JetStream KV")
        }
        let bucketSafe = clusterId.unicodeScalars.allSatisfy {
            $0.isASCII && (CharacterSet.alphanumerics.contains($0) || $0 == "-" || $0 == "_")
        }
        if !bucketSafe {
            try fail(
                "-election nats-kv: -cluster '\(clusterId)' must be letters, digits, '-' and '_' (it names the KV buckets)"
            )
        }
    }

    /// The TLS and NATS credential flags: complete sets, readable files, and a
    /// well-formed creds or nkey file (a malformed one is refused here, at
    /// start-up, since the connection itself is made in the background).
    func validateSecurity() throws {
        func fail(_ message: String) throws -> Never { throw PulseError.config(message) }
        let raftTLS = [("-raft-tls-cert", raftTLSCert), ("-raft-tls-key", raftTLSKey), ("-raft-tls-ca", raftTLSCA)]
        let given = raftTLS.filter { !$0.1.isEmpty }
        if !given.isEmpty && given.count < 3 {
            try fail(
                "Raft TLS needs -raft-tls-cert, -raft-tls-key and -raft-tls-ca together (got only \(given.map(\.0).joined(separator: ", ")))"
            )
        }
        if !given.isEmpty && peers.isEmpty { try fail("-raft-tls-* needs -peers (a single node has no Raft traffic)") }
        // Off loopback, plain TCP lets any host that reaches the port speak
        // as a member (issue 20, item 3): mutual TLS, or an explicit opt-out.
        if !peers.isEmpty && given.isEmpty && !raftInsecure,
            let bindHost = try? PeerList.parse(peers: peers, nodeId: nodeId, raftBind: raftBind).bindHost,
            !bindHost.hasPrefix("127.")
        {
            try fail(
                "-raft-bind \(bindHost) is not a loopback address: give -raft-tls-cert, -raft-tls-key and -raft-tls-ca (scripts/certs.sh, make certs), or -raft-insecure to run Raft over plain TCP"
            )
        }
        if natsCert.isEmpty != natsKey.isEmpty { try fail("-nats-cert and -nats-key go together") }
        if !natsCreds.isEmpty && !natsNkey.isEmpty { try fail("give -nats-creds or -nats-nkey, not both") }
        let files =
            given + [
                ("-nats-creds", natsCreds), ("-nats-nkey", natsNkey), ("-nats-ca", natsCA), ("-nats-cert", natsCert),
                ("-nats-key", natsKey), ("-sign-key", signKey),
            ]
        for (flag, path) in files where !path.isEmpty {
            guard FileManager.default.isReadableFile(atPath: path) else {
                try fail("\(flag) \(path): not a readable file")
            }
        }
        do {
            if !natsCreds.isEmpty { _ = try NatsAuth.parseCreds(fileContents: try Self.read(natsCreds)) }
            if !natsNkey.isEmpty { _ = try NatsAuth.parseSeedFile(fileContents: try Self.read(natsNkey)) }
        } catch let error as NatsAuth.Invalid {
            try fail("\(natsCreds.isEmpty ? "-nats-nkey \(natsNkey)" : "-nats-creds \(natsCreds)"): \(error.reason)")
        }
        if !signKey.isEmpty { _ = try PublicationSigner(keyFile: signKey) }  // one line naming the file
        var probe = in_addr()
        if inet_pton(AF_INET, adminBind, &probe) != 1 {
            try fail("-admin-bind must be a numeric IPv4 address (got '\(adminBind)')")
        }
        // Off loopback, anyone on the network could change the tempo and the
        // membership: a token is mandatory there (docs/security.md).
        if UInt32(bigEndian: probe.s_addr) >> 24 != 127 && adminToken == nil {
            try fail(
                "-admin-bind \(adminBind) is not a loopback address: set -admin-token or -admin-token-file too")
        }
        for bad in adminHosts where AdminHostNames.split(authority: Array(bad.utf8)).map({ $0.port != nil }) ?? true {
            try fail("-admin-hosts: '\(bad)' is not a host name (no port, no spaces)")
        }
    }

    /// What SIGHUP does to the log level.
    enum LogLevelReload: Equatable {
        case changed(String)
        case unchanged(String)
        case failed(String)
    }

    /// SIGHUP: the level `-config` now gives (the default when the file no
    /// longer sets it), unless -log-level or BACKBEAT_LOG_LEVEL pinned it.
    func reloadLogLevel() -> LogLevelReload {
        if logLevelPinned { return .unchanged("set by -log-level or BACKBEAT_LOG_LEVEL") }
        guard !configFile.isEmpty else { return .unchanged("no -config file") }
        do {
            let level = (try ConfigFile.load(configFile)["BACKBEAT_LOG_LEVEL"] ?? "").lowercased()
            let wanted = level.isEmpty ? PulseConfig().logLevel : level
            guard LogLevelName(rawValue: wanted) != nil else {
                return .failed("BACKBEAT_LOG_LEVEL must be one of debug, info, warn, error (got '\(level)')")
            }
            return .changed(wanted)
        } catch {
            return .failed("\(error)")
        }
    }

    /// The online CPUs (/sys/devices/system/cpu/online, e.g. `0-3,8`), which
    /// need not start at 0 or be contiguous (a container's cpuset names real
    /// CPU numbers). Whether this process may use one is for the pinning
    /// itself to say (sched_setaffinity, at start-up, one line if refused);
    /// the affinity mask is not the test, since a parent pinned elsewhere
    /// (Bench, taskset) may start a pulse meant for another core.
    static func allowedCPUs() -> [Int] {
        let text = (try? String(contentsOfFile: "/sys/devices/system/cpu/online", encoding: .utf8)) ?? ""
        let cpus = parseCPUList(text)
        return cpus.isEmpty ? Array(0..<ProcessInfo.processInfo.activeProcessorCount) : cpus
    }

    /// A kernel CPU list (`0-3,8,10-11`) to its CPUs; [] when malformed. Pure.
    static func parseCPUList(_ text: String) -> [Int] {
        var cpus: [Int] = []
        for part in text.trimmingCharacters(in: .whitespacesAndNewlines).split(
            separator: ",", omittingEmptySubsequences: false)
        {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false).map { Int($0) }
            guard (1...2).contains(bounds.count), let low = bounds[0], let high = bounds.last!, low <= high,
                low >= 0, high < 4096
            else { return [] }
            cpus += Array(low...high)
        }
        return cpus
    }

    /// A small file's contents (credentials), bounded to 64 KiB.
    static func read(_ path: String) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw PulseError.config("\(path): cannot open") }
        defer { try? handle.close() }
        let data = handle.readData(ofLength: 64 * 1024 + 1)
        guard data.count <= 64 * 1024 else { throw PulseError.config("\(path): larger than 64 KiB") }
        return String(decoding: data, as: UTF8.self)
    }

    /// Cluster and node ids go into NATS subjects, JSON and file names.
    public static func checkToken(_ value: String, what: String) throws {
        if let violation = tokenViolation(value) { throw PulseError.config("\(what) \(violation)") }
    }

    /// The rule for cluster and node ids, from a flag or from the data dir's
    /// `node_id` file alike (`IdToken.violation`, which the nats-kv pulses
    /// also apply to the ids in each other's pings and reports).
    static func tokenViolation(_ value: String) -> String? { IdToken.violation(value) }
}

/// Log levels as operators spell them in BACKBEAT_LOG_LEVEL.
enum LogLevelName: String {
    case debug, info, warn, error
}

/// The `pulse` command line. Parsing only; `PulseConfig` holds the result.
/// A `ParsableCommand` only for its name in `--help` (`pulse`, not the type's).
/// How every flag of `pulse` and its tools is spelled: one dash or two.
public enum FlagName {
    /// `-name` and `--name`.
    public static func both(_ name: String) -> NameSpecification {
        [.customLong(name, withSingleDash: true), .customLong(name)]
    }
}

struct PulseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pulse")

    static func both(_ name: String) -> NameSpecification { FlagName.both(name) }

    @Option(name: both("cluster"), help: "Cluster identifier (env BACKBEAT_CLUSTER_ID; default chorus-aus-01)")
    var cluster: String?
    @Option(name: both("node-id"), help: "Node identifier (generated and kept in the data dir if empty)")
    var nodeId: String?
    @Option(name: both("bpm"), help: "Initial tempo in beats per minute (default 12)")
    var bpm: Int?
    @Option(name: both("bar"), help: "Beats per bar (default 8)")
    var bar: Int?
    @Option(name: both("phases"), help: "Comma-separated phase names (default plan,work,review)")
    var phases: String?
    @Option(name: both("min-bpm"), help: "Minimum allowed tempo (default 4)")
    var minBpm: Int?
    @Option(name: both("max-bpm"), help: "Maximum allowed tempo (default 24)")
    var maxBpm: Int?
    @Option(
        name: both("nats"), help: "NATS server URL, or a comma-separated list of them (default nats://localhost:4222)")
    var nats: String?
    @Option(name: both("admin-port"), help: "Admin HTTP port (default 8080)")
    var adminPort: Int?
    @Option(
        name: both("admin-bind"),
        help: "Admin HTTP listen address, numeric IPv4 (env BACKBEAT_ADMIN_BIND; default 127.0.0.1)")
    var adminBind: String?
    @Option(
        name: both("admin-hosts"),
        help:
            "Comma-separated names the admin API is reached by, besides localhost, the host name and IP addresses (env BACKBEAT_ADMIN_HOSTS)"
    )
    var adminHosts: String?
    @Option(
        name: both("raft-tls-cert"),
        help: "Raft mutual TLS: this node's certificate chain, PEM (env BACKBEAT_RAFT_TLS_CERT; re-read on SIGHUP)")
    var raftTLSCert: String?
    @Option(
        name: both("raft-tls-key"), help: "Raft mutual TLS: this node's private key, PEM (env BACKBEAT_RAFT_TLS_KEY)")
    var raftTLSKey: String?
    @Option(name: both("raft-tls-ca"), help: "Raft mutual TLS: the cluster's CA, PEM (env BACKBEAT_RAFT_TLS_CA)")
    var raftTLSCA: String?
    @Option(name: both("nats-creds"), help: "NATS credentials file, JWT + nkey seed (env BACKBEAT_NATS_CREDS)")
    var natsCreds: String?
    @Option(name: both("nats-nkey"), help: "NATS nkey seed file of a user (env BACKBEAT_NATS_NKEY)")
    var natsNkey: String?
    @Option(
        name: both("nats-ca"), help: "CA for the NATS server's certificate, PEM; implies TLS (env BACKBEAT_NATS_CA)")
    var natsCA: String?
    @Option(name: both("nats-cert"), help: "NATS client certificate, PEM (env BACKBEAT_NATS_CERT)")
    var natsCert: String?
    @Option(name: both("nats-key"), help: "NATS client private key, PEM (env BACKBEAT_NATS_KEY)")
    var natsKey: String?
    @Option(
        name: both("sign-key"),
        help:
            "Sign every frame, timeline and tempo announcement with this Ed25519 private key, PEM (env BACKBEAT_SIGN_KEY)"
    )
    var signKey: String?
    @Option(name: both("raft-bind"), help: "Raft bind address host:port (default 127.0.0.1:0)")
    var raftBind: String?
    @Flag(
        name: both("raft-insecure"),
        help:
            "Allow Raft over plain TCP on a non-loopback -raft-bind (refused otherwise: give -raft-tls-*) (env BACKBEAT_RAFT_INSECURE)"
    )
    var raftInsecure = false
    @Flag(name: both("bootstrap"), help: "Bootstrap a new cluster: start the timeline on the next whole second")
    var bootstrap = false
    @Flag(
        name: both("join"),
        help:
            "Join a running cluster: start with an empty log, not a voter, and wait to be added (pulse members add); excludes -bootstrap"
    )
    var join = false
    @Option(name: both("peers"), help: "Comma-separated Raft peers, host:port or id@host:port")
    var peers: String?
    @Option(name: both("data-dir"), help: "Data directory (env BACKBEAT_DATA_DIR; default .backbeat/<cluster>-<port>)")
    var dataDir: String?
    @Option(name: both("cpu"), help: "Pin the loop thread to this CPU core")
    var cpu: Int?
    @Option(name: both("rt-priority"), help: "SCHED_FIFO priority 1-99 for the loop thread (0: off, the default)")
    var rtPriority: Int?
    @Flag(name: both("mlock"), help: "Lock all memory (mlockall) so the beat path never page-faults")
    var mlock = false
    @Option(name: both("spin-max-us"), help: "Longest busy-wait before a beat, in microseconds (default 2000)")
    var spinMaxUs: Int?
    @Option(
        name: both("max-offset-ms"), help: "HLC: a remote stamp further ahead than this is not adopted (default 500)")
    var maxOffsetMs: Int?
    @Option(name: both("log-format"), help: "Log line format: text or json (default text)")
    var logFormat: String?
    @Option(
        name: both("log-level"),
        help: "debug, info, warn or error (env BACKBEAT_LOG_LEVEL; default info; re-read from -config on SIGHUP)")
    var logLevel: String?
    @Option(
        name: both("config"),
        help: "File of BACKBEAT_<FLAG>=value lines, under the environment and the flags (env BACKBEAT_CONFIG)")
    var config: String?
    @Option(
        name: both("admin-token"),
        help: "Bearer token required on POST requests to the admin API (env BACKBEAT_ADMIN_TOKEN; default none)")
    var adminToken: String?
    @Option(
        name: both("admin-token-file"),
        help:
            "File holding the admin bearer token, e.g. a mounted secret; excludes -admin-token (env BACKBEAT_ADMIN_TOKEN_FILE)"
    )
    var adminTokenFile: String?
    @Option(name: both("heartbeat-ms"), help: "Raft heartbeat interval in ms (default 50)")
    var heartbeatMs: Int?
    @Option(
        name: both("election-timeout-ms"),
        help: "Raft election timeout in ms; followers elect after [t, 2t) without a leader (default 300)")
    var electionTimeoutMs: Int?
    @Option(
        name: both("degrade-after-ms"),
        help: "Enter degradation after this long without a leader (default: 3 beats or 3 election timeouts, the longer)"
    )
    var degradeAfterMs: Int?
    @Option(
        name: both("raft-compact-every"),
        help: "Snapshot the timeline and drop the Raft log after this many applied entries (default 64)")
    var raftCompactEvery: Int?
    @Option(
        name: both("election"),
        help:
            "Leader election: raft (the default) or nats-kv, a JetStream KV lease on the -nats servers (env BACKBEAT_ELECTION)"
    )
    var election: String?
    @Option(name: both("kv-replicas"), help: "nats-kv: replicas of the KV buckets (default 1; 3 on a 3-server cluster)")
    var kvReplicas: Int?
    @Option(
        name: both("kv-start-wait-ms"),
        help: "nats-kv: retry start-up this long while no NATS server answers (default 30000; 0: exit at once)")
    var kvStartWaitMs: Int?
    @Flag(
        name: both("kv-allow-old-server"),
        help:
            "nats-kv: with -kv-replicas > 1, start on a nats-server older than 2.11 (pre-releases of 2.11.0 included) or whose INFO line cannot be read (both refused otherwise, checked at start-up only); 2.11 is the floor this checks, not a proof of a linearizable compare-and-set (docs/decisions.md)"
    )
    var kvAllowOldServer = false

    /// Applies the parsed arguments (environment and file already folded in
    /// as leading arguments) over the defaults, then validates.
    func resolve() throws -> PulseConfig {
        var config = PulseConfig()
        if let logLevel { config.logLevel = logLevel.lowercased() }
        if let file = self.config { config.configFile = file }
        if let cluster { config.clusterId = cluster }
        if let nodeId { config.nodeId = nodeId }
        if let bpm { config.bpm = bpm }
        if let bar { config.bar = bar }
        if let phases {
            config.phases = phases.split(separator: ",", omittingEmptySubsequences: false).map {
                $0.trimmingCharacters(in: .whitespaces)
            }
        }
        if let minBpm { config.minBpm = minBpm }
        if let maxBpm { config.maxBpm = maxBpm }
        if let nats { config.natsURL = nats }
        if let adminPort { config.adminPort = adminPort }
        if let raftBind { config.raftBind = raftBind }
        config.bootstrap = bootstrap
        config.join = join
        config.raftInsecure = raftInsecure
        if let peers { config.peers = peers.split(separator: ",").map { String($0) }.filter { !$0.isEmpty } }
        if let dataDir { config.dataDir = dataDir }
        config.cpu = cpu
        if let rtPriority { config.rtPriority = rtPriority }
        config.lockMemory = mlock
        if let spinMaxUs { config.spinMaxUs = spinMaxUs }
        if let maxOffsetMs { config.maxOffsetMs = maxOffsetMs }
        if let logFormat { config.logFormat = logFormat }
        if let adminToken { config.adminToken = adminToken.isEmpty ? nil : adminToken }
        if let adminTokenFile {
            if adminToken != nil {
                throw PulseError.config(
                    "give -admin-token or -admin-token-file (or their BACKBEAT_ variables), not both")
            }
            config.adminToken = try AdminTokenFile.read(adminTokenFile, flag: "-admin-token-file")
        }
        if let adminHosts {
            config.adminHosts = adminHosts.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                .filter { !$0.isEmpty }
        }
        if let heartbeatMs { config.heartbeatMs = heartbeatMs }
        if let electionTimeoutMs { config.electionTimeoutMs = electionTimeoutMs }
        if let degradeAfterMs { config.degradeAfterMs = degradeAfterMs }
        if let raftCompactEvery { config.raftCompactEvery = raftCompactEvery }
        if let election { config.election = election.lowercased() }
        if let kvReplicas { config.kvReplicas = kvReplicas }
        if let kvStartWaitMs { config.kvStartWaitMs = kvStartWaitMs }
        config.kvAllowOldServer = kvAllowOldServer
        let flags: [(String?, WritableKeyPath<PulseConfig, String>)] = [
            (adminBind, \.adminBind), (raftTLSCert, \.raftTLSCert), (raftTLSKey, \.raftTLSKey),
            (raftTLSCA, \.raftTLSCA),
            (natsCreds, \.natsCreds), (natsNkey, \.natsNkey), (natsCA, \.natsCA), (natsCert, \.natsCert),
            (natsKey, \.natsKey), (signKey, \.signKey),
        ]
        for (value, path) in flags { if let value { config[keyPath: path] = value } }
        try config.validate()
        return config
    }

    /// Every flag's name and whether it is a switch (no value). A test checks
    /// this list against the declared options, so none lacks its variable.
    static let settings: [(flag: String, isSwitch: Bool)] =
        [
            "cluster", "node-id", "bpm", "bar", "phases", "min-bpm", "max-bpm", "nats", "admin-port", "admin-bind",
            "raft-tls-cert", "raft-tls-key", "raft-tls-ca", "nats-creds", "nats-nkey", "nats-ca", "nats-cert",
            "nats-key", "raft-bind", "peers", "data-dir", "cpu", "rt-priority", "spin-max-us", "max-offset-ms",
            "log-format", "log-level", "config", "admin-token", "admin-token-file", "heartbeat-ms",
            "election-timeout-ms",
            "degrade-after-ms", "raft-compact-every", "admin-hosts", "sign-key", "election", "kv-replicas",
            "kv-start-wait-ms",
        ].map { ($0, false) } + [
            ("bootstrap", true), ("join", true), ("mlock", true), ("raft-insecure", true),
            ("kv-allow-old-server", true),
        ]

    /// The environment variable of `flag`: BACKBEAT_ and the name in upper
    /// case with `_` for `-`; `cluster` keeps the seed's BACKBEAT_CLUSTER_ID.
    static func environmentName(_ flag: String) -> String {
        if flag == "cluster" { return "BACKBEAT_CLUSTER_ID" }
        return "BACKBEAT_" + flag.uppercased().replacingOccurrences(of: "-", with: "_")
    }

    /// Parses `arguments` (without the program name) over `environment` over
    /// the `-config` file. Errors are one line.
    static func parseConfig(_ arguments: [String], environment: [String: String]) throws -> PulseConfig {
        let switches = Set(settings.filter(\.isSwitch).map(\.flag))
        let (arguments, setOnCommandLine) = try GoSwitches.normalize(arguments, switches: switches)
        let given = try parseOneLine(arguments)
        let file = given.config ?? environment["BACKBEAT_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        var layered: [String: String] = [:]
        if let file { layered = try ConfigFile.load(file) }
        for (name, value) in environment where name.hasPrefix("BACKBEAT_") && !value.isEmpty { layered[name] = value }
        var leading: [String] = []
        for (flag, isSwitch) in settings {
            let name = environmentName(flag)
            // Empty means unset (as `FOO= pulse` is commonly meant).
            guard let value = layered[name], !value.isEmpty else { continue }
            let source = (environment[name] ?? "").isEmpty ? "\(name) in \(file ?? "-config")" : name
            if isSwitch {
                guard let on = GoSwitches.boolean(value) else {
                    throw PulseError.config("\(source) must be true or false (got '\(value)')")
                }
                // `-x=false` on the command line wins over the environment's true.
                if on && !setOnCommandLine.contains(flag) { leading.append("--\(flag)") }
                continue
            }
            do {
                _ = try parseOneLine(["--\(flag)", value])
            } catch {
                throw PulseError.config("\(source): \(error)")
            }
            leading += ["--\(flag)", value]
        }
        var config = try parseOneLine(leading + arguments).resolve()
        // Pinned: set by the command line or the environment, which SIGHUP cannot re-read.
        config.logLevelPinned = given.logLevel != nil || !(environment["BACKBEAT_LOG_LEVEL"] ?? "").isEmpty
        if let file { config.configFile = file }
        return config
    }

    /// ArgumentParser's parse with its error as one line.
    private static func parseOneLine(_ arguments: [String]) throws -> PulseCommand {
        do {
            return try PulseCommand.parse(arguments)
        } catch {
            let message = PulseCommand.message(for: error)
            throw PulseError.config(message.split(separator: "\n").first.map(String.init) ?? "invalid arguments")
        }
    }
}

/// A bearer token kept in a file (a Kubernetes or Docker secret, a
/// systemd credential): at most 64 KiB, surrounding whitespace and the
/// final newline dropped; empty or with inner whitespace or control
/// characters is refused (it goes into an HTTP header).
public enum AdminTokenFile {
    public static func read(_ path: String, flag: String) throws -> String {
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw PulseError.config("\(flag) \(path): not a readable file")
        }
        let token: String
        do {
            token = try PulseConfig.read(path).trimmingCharacters(in: .whitespacesAndNewlines)
        } catch {
            throw PulseError.config("\(flag) \(error)")
        }
        if let problem = problem(token) { throw PulseError.config("\(flag) \(path): \(problem)") }
        return token
    }

    /// Why `token` cannot be a bearer token, or nil. Pure.
    static func problem(_ token: String) -> String? {
        if token.isEmpty { return "the file is empty" }
        if token.unicodeScalars.contains(where: {
            CharacterSet.whitespacesAndNewlines.contains($0) || CharacterSet.controlCharacters.contains($0)
        }) {
            return "the token must be one line without spaces or control characters"
        }
        return nil
    }
}

/// Go-style switches, as Go's `flag` package and the seed's scripts pass
/// them: `-bootstrap=true`, `--join=false`. ArgumentParser's flags take no
/// value, so these are rewritten before parsing: true to the bare flag,
/// false to nothing.
public enum GoSwitches {
    /// A switch's value: Go's `strconv.ParseBool` spellings plus yes/no and
    /// on/off (as the environment allows), any case; nil for anything else.
    static func boolean(_ text: String) -> Bool? {
        switch text.lowercased() {
        case "1", "t", "true", "yes", "on": return true
        case "0", "f", "false", "no", "off": return false
        default: return nil
        }
    }

    /// `arguments` with every `-name=value` / `--name=value` of a name in
    /// `switches` replaced by `--name` (true) or removed (false), and the
    /// switches the command line set either way (bare or with a value). The
    /// value of a non-switch option (`-admin-token -x=1`) is left alone. A
    /// value that is not a boolean is a one-line error.
    public static func normalize(_ arguments: [String], switches: Set<String>) throws -> (
        arguments: [String], set: Set<String>
    ) {
        var out: [String] = []
        var set: Set<String> = []
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            guard argument.hasPrefix("-"), argument != "-", argument != "--" else {
                out.append(argument)
                if argument == "--" {
                    out += arguments[index...]
                    break
                }
                continue
            }
            let body = argument.drop(while: { $0 == "-" })
            let parts = body.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(parts[0])
            guard switches.contains(name) else {
                out.append(argument)
                // An option's value follows it unless given with `=`.
                if parts.count == 1 && index < arguments.count && !["h", "help"].contains(name) {
                    out.append(arguments[index])
                    index += 1
                }
                continue
            }
            set.insert(name)
            guard parts.count == 2 else {
                out.append(argument)
                continue
            }
            guard let on = boolean(String(parts[1])) else {
                throw PulseError.config(
                    "-\(name) is a switch: give -\(name), -\(name)=true or -\(name)=false (got '\(parts[1])')")
            }
            if on { out.append("--\(name)") }
        }
        return (out, set)
    }
}

/// `-config FILE`: `BACKBEAT_<FLAG>=value` lines, as a systemd EnvironmentFile
/// or a compose env_file holds them. Blank lines and `#` comments are
/// skipped, `export ` is allowed, a value may be quoted ('…' or "…"). An
/// unknown key or a line without `=` is refused naming the line, so a typo
/// does not silently leave a default in force. At most 64 KiB.
enum ConfigFile {
    static func load(_ path: String) throws -> [String: String] {
        guard FileManager.default.isReadableFile(atPath: path) else {
            throw PulseError.config("-config \(path): not a readable file")
        }
        do {
            return try parse(PulseConfig.read(path))
        } catch let error as PulseError {
            throw PulseError.config("-config \(path): \(error)")
        }
    }

    /// Pure: the file's text to its settings. Never traps on any input.
    static func parse(_ text: String) throws -> [String: String] {
        let known = Set(PulseCommand.settings.map { PulseCommand.environmentName($0.flag) })
        var values: [String: String] = [:]
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("export ") { line = String(line.dropFirst(7)).trimmingCharacters(in: .whitespaces) }
            guard let equals = line.firstIndex(of: "=") else {
                throw PulseError.config("line \(number + 1) is not NAME=value")
            }
            let name = String(line[..<equals]).trimmingCharacters(in: .whitespaces)
            var value = String(line[line.index(after: equals)...]).trimmingCharacters(in: .whitespaces)
            guard known.contains(name), name != "BACKBEAT_CONFIG" else {
                throw PulseError.config("line \(number + 1): unknown setting '\(name)'")
            }
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first {
                value = String(value.dropFirst().dropLast())
            }
            values[name] = value
        }
        return values
    }
}
