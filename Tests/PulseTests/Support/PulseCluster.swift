// Three real `pulse` processes forming a Raft cluster on loopback, with a real
// nats-server, for the process tests (ClusterProcessTests, RaftTLSTests,
// HostilePeerTests, DegradationProcessTests).
import Foundation
import XCTest

/// Three bootstrapped `pulse` nodes (n1, n2, n3) on free loopback ports, one
/// nats-server, a temporary data directory; with `tls`, Raft runs over mutual
/// TLS with each node's own certificate made by scripts/certs.sh in `certDir`.
/// Every node is stopped and the directory removed on deinit.
final class PulseCluster {
    let nats: NatsServer
    let dir: String
    /// Where the certificates are (made only with `tls`).
    let certDir: String
    let names = ["n1", "n2", "n3"]
    let raftPorts: [Int]
    let adminPorts: [Int]
    let cluster: String
    let bpm: Int
    let tls: Bool
    var nodes: [PulseProcess?] = [nil, nil, nil]

    /// Arguments appended to every node's command line.
    let extra: [String]
    /// The NATS server the nodes use: `nats`'s, unless another was given.
    let natsURL: String
    /// Environment added per node (by index), e.g. libfaketime's for a skewed clock.
    let environments: [Int: [String: String]]

    init(
        cluster: String, bpm: Int, extra: [String] = [], tls: Bool = false, natsURL: String? = nil,
        environments: [Int: [String: String]] = [:]
    ) throws {
        self.cluster = cluster
        self.environments = environments
        self.bpm = bpm
        self.extra = extra
        self.tls = tls
        nats = try NatsServer()
        self.natsURL = natsURL ?? nats.url
        dir = Harness.tempDir(cluster)
        certDir = dir + "/certs"
        if tls { try RaftTLSTests.certs([certDir] + names) }
        raftPorts = (0..<3).map { _ in Harness.freePort() }
        adminPorts = (0..<3).map { _ in Harness.freePort() }
        for i in 0..<3 { try start(i) }
    }

    var peers: String { (0..<3).map { "\(names[$0])@127.0.0.1:\(raftPorts[$0])" }.joined(separator: ",") }

    func start(_ i: Int) throws {
        let name = names[i]
        let tlsArguments =
            tls
            ? [
                "-raft-tls-cert", "\(certDir)/\(name).pem", "-raft-tls-key", "\(certDir)/\(name).key",
                "-raft-tls-ca", "\(certDir)/ca.pem",
            ] : []
        nodes[i] = try PulseProcess(
            arguments: [
                "-bootstrap", "-bpm", "\(bpm)", "-max-bpm", "600", "-cluster", cluster, "-node-id", name,
                "-raft-bind", "127.0.0.1:\(raftPorts[i])", "-peers", peers, "-nats", natsURL,
                "-data-dir", "\(dir)/\(name)", "-admin-port", "\(adminPorts[i])",
            ] + tlsArguments + extra, logPath: "\(dir)/\(name).log", environment: environments[i] ?? [:])
    }

    /// The JSON body of GET `path` on node `i`'s admin port ([:] on any failure).
    func get(_ i: Int, _ path: String) -> [String: Any] { Self.adminJSON(port: adminPorts[i], path) }

    /// The JSON body of GET `path` on the admin API at `port` ([:] on any failure).
    static func adminJSON(port: Int, _ path: String) -> [String: Any] {
        guard let client = try? RawClient(port: port, timeoutMs: 2000),
            let response = client.request(httpRequest("GET", path))
        else { return [:] }
        return response.json
    }

    /// Index of the node that says it leads, waiting (bounded) for one.
    func leader(seconds: Double = 10) -> Int? {
        var found: Int?
        Harness.waitUntil(seconds: seconds) {
            found = (0..<3).first { self.nodes[$0] != nil && self.get($0, "/leader")["is_leader"] as? Bool == true }
            return found != nil
        }
        return found
    }

    var logs: String {
        names.map { name in
            "--- \(name)\n" + ((try? String(contentsOfFile: "\(dir)/\(name).log", encoding: .utf8)) ?? "")
        }.joined(separator: "\n")
    }

    func metrics(_ i: Int) throws -> String {
        let client = try RawClient(port: adminPorts[i], timeoutMs: 2000)
        return client.request(httpRequest("GET", "/metrics"))?.text ?? ""
    }

    func stopAll() {
        for node in nodes { node?.stop() }
    }

    deinit {
        stopAll()
        try? FileManager.default.removeItem(atPath: dir)
    }
}
