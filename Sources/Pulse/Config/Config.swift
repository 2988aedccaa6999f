// Config: the command line, the environment and their validation.
//
// Every flag is accepted with one dash (`-bpm 12`, as the seed's users type
// them) and with two (`--bpm 12`); `-flag=value` works too. Precedence: a flag
// given on the command line, then the environment, then the default.
// Invalid configuration is one line on stderr and exit status 2.
import ArgumentParser
import Foundation
import Glibc

/// Errors that stop the pulse before it serves: one line each.
enum PulseError: Error, CustomStringConvertible {
    case config(String)
    case startup(String)

    var description: String {
        switch self {
        case .config(let message), .startup(let message): return message
        }
    }
}

/// Validated configuration of one pulse node.
struct PulseConfig: Sendable {
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
    var peers: [String] = []
    var dataDir = ""
    var cpu: Int? = nil
    var rtPriority = 0
    var lockMemory = false
    var spinMaxUs = 2000
    var maxOffsetMs = 500
    var logLevel = "info"
    var logFormat = "text"
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
    /// NATS: a creds file (JWT + nkey seed), an nkey seed file, a CA for the
    /// server's certificate, and a client certificate and key (PEM).
    var natsCreds = ""
    var natsNkey = ""
    var natsCA = ""
    var natsCert = ""
    var natsKey = ""
    /// The admin HTTP listener's IPv4 address (loopback unless told otherwise).
    var adminBind = "127.0.0.1"

    var raftTLSEnabled: Bool { !raftTLSCert.isEmpty }

    var beatSubject: String { "backbeat.\(clusterId).beat" }
    var controlSubject: String { "backbeat.\(clusterId).control" }

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
        if let cpu, cpu < 0 || cpu >= ProcessInfo.processInfo.activeProcessorCount {
            try fail("-cpu \(cpu) is not an online CPU (0...\(ProcessInfo.processInfo.activeProcessorCount - 1))")
        }
        if !(0...99).contains(rtPriority) { try fail("-rt-priority must be 0 (off) or 1...99 (got \(rtPriority))") }
        if !(0...100_000).contains(spinMaxUs) {
            try fail("-spin-max-us must be between 0 and 100000 (got \(spinMaxUs))")
        }
        if !(1...60_000).contains(maxOffsetMs) { try fail("-max-offset-ms must be between 1 and 60000") }
        if LogLevelName(rawValue: logLevel) == nil {
            try fail("BACKBEAT_LOG_LEVEL must be one of debug, info, warn, error (got '\(logLevel)')")
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
        if !peers.isEmpty {
            _ = try PeerList.parse(peers: peers, nodeId: nodeId, raftBind: raftBind)
        }
        try validateSecurity()
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
        if natsCert.isEmpty != natsKey.isEmpty { try fail("-nats-cert and -nats-key go together") }
        if !natsCreds.isEmpty && !natsNkey.isEmpty { try fail("give -nats-creds or -nats-nkey, not both") }
        let files =
            given + [
                ("-nats-creds", natsCreds), ("-nats-nkey", natsNkey), ("-nats-ca", natsCA), ("-nats-cert", natsCert),
                ("-nats-key", natsKey),
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
        var probe = in_addr()
        if inet_pton(AF_INET, adminBind, &probe) != 1 {
            try fail("-admin-bind must be a numeric IPv4 address (got '\(adminBind)')")
        }
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
    static func checkToken(_ value: String, what: String) throws {
        if let violation = tokenViolation(value) { throw PulseError.config("\(what) \(violation)") }
    }

    /// The rule for cluster and node ids, from a flag or from the data dir's
    /// `node_id` file alike: nil when `value` is acceptable, else why not (a
    /// phrase after the id's name). Pure; never traps on any string.
    static func tokenViolation(_ value: String) -> String? {
        if value.isEmpty { return "must not be empty" }
        if value.utf8.count > 128 { return "must be at most 128 bytes (got \(value.utf8.count))" }
        // U+FFFD is what invalid UTF-8 on the command line decodes to.
        if value.unicodeScalars.contains("\u{FFFD}") { return "must be valid UTF-8" }
        if value.unicodeScalars.contains(where: CharacterSet.controlCharacters.contains) {
            return "must not contain control characters"
        }
        let forbidden = CharacterSet(charactersIn: ".*>/\\").union(.whitespacesAndNewlines)
        if value.unicodeScalars.contains(where: forbidden.contains) {
            return "'\(value)' must not contain spaces, '.', '*', '>', '/' or '\\'"
        }
        return nil
    }
}

/// Log levels as operators spell them in BACKBEAT_LOG_LEVEL.
enum LogLevelName: String {
    case debug, info, warn, error
}

/// The `pulse` command line. Parsing only; `PulseConfig` holds the result.
struct PulseCommand: ParsableArguments {
    static func both(_ name: String) -> NameSpecification {
        [.customLong(name, withSingleDash: true), .customLong(name)]
    }

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
    @Option(name: both("raft-bind"), help: "Raft bind address host:port (default 127.0.0.1:0)")
    var raftBind: String?
    @Flag(name: both("bootstrap"), help: "Bootstrap a new cluster: start the timeline on the next whole second")
    var bootstrap = false
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
        name: both("admin-token"),
        help: "Bearer token required on POST requests to the admin API (env BACKBEAT_ADMIN_TOKEN; default none)")
    var adminToken: String?
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

    /// Applies flags over the environment over the defaults, then validates.
    func resolve(environment: [String: String]) throws -> PulseConfig {
        var config = PulseConfig()
        if let v = environment["BACKBEAT_CLUSTER_ID"], !v.isEmpty { config.clusterId = v }
        if let v = environment["BACKBEAT_DATA_DIR"], !v.isEmpty { config.dataDir = v }
        if let v = environment["BACKBEAT_LOG_LEVEL"], !v.isEmpty { config.logLevel = v.lowercased() }
        for (name, path) in Self.securityEnvironment {
            if let v = environment[name], !v.isEmpty { config[keyPath: path] = v }
        }
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
        if let peers { config.peers = peers.split(separator: ",").map { String($0) }.filter { !$0.isEmpty } }
        if let dataDir { config.dataDir = dataDir }
        config.cpu = cpu
        if let rtPriority { config.rtPriority = rtPriority }
        config.lockMemory = mlock
        if let spinMaxUs { config.spinMaxUs = spinMaxUs }
        if let maxOffsetMs { config.maxOffsetMs = maxOffsetMs }
        if let logFormat { config.logFormat = logFormat }
        if let v = environment["BACKBEAT_ADMIN_TOKEN"], !v.isEmpty { config.adminToken = v }
        if let adminToken { config.adminToken = adminToken.isEmpty ? nil : adminToken }
        if let heartbeatMs { config.heartbeatMs = heartbeatMs }
        if let electionTimeoutMs { config.electionTimeoutMs = electionTimeoutMs }
        if let degradeAfterMs { config.degradeAfterMs = degradeAfterMs }
        if let raftCompactEvery { config.raftCompactEvery = raftCompactEvery }
        let flags: [(String?, WritableKeyPath<PulseConfig, String>)] = [
            (adminBind, \.adminBind), (raftTLSCert, \.raftTLSCert), (raftTLSKey, \.raftTLSKey),
            (raftTLSCA, \.raftTLSCA),
            (natsCreds, \.natsCreds), (natsNkey, \.natsNkey), (natsCA, \.natsCA), (natsCert, \.natsCert),
            (natsKey, \.natsKey),
        ]
        for (value, path) in flags { if let value { config[keyPath: path] = value } }
        try config.validate()
        return config
    }

    /// Environment variables of the security flags (a flag wins over them).
    static let securityEnvironment: [(String, WritableKeyPath<PulseConfig, String>)] = [
        ("BACKBEAT_ADMIN_BIND", \.adminBind), ("BACKBEAT_RAFT_TLS_CERT", \.raftTLSCert),
        ("BACKBEAT_RAFT_TLS_KEY", \.raftTLSKey), ("BACKBEAT_RAFT_TLS_CA", \.raftTLSCA),
        ("BACKBEAT_NATS_CREDS", \.natsCreds), ("BACKBEAT_NATS_NKEY", \.natsNkey), ("BACKBEAT_NATS_CA", \.natsCA),
        ("BACKBEAT_NATS_CERT", \.natsCert), ("BACKBEAT_NATS_KEY", \.natsKey),
    ]

    /// Parses `arguments` (without the program name). Errors are one line.
    static func parseConfig(_ arguments: [String], environment: [String: String]) throws -> PulseConfig {
        let command: PulseCommand
        do {
            command = try PulseCommand.parse(arguments)
        } catch {
            let message = PulseCommand.message(for: error)
            throw PulseError.config(message.split(separator: "\n").first.map(String.init) ?? "invalid arguments")
        }
        return try command.resolve(environment: environment)
    }
}
