// Test support for the client tests: a real nats-server on a free loopback
// port, `pulse` processes (the binary built next to the test bundle), and a
// small HTTP/1.1 client for the admin API. Every wait is bounded in time.
// (A trimmed copy of Tests/PulseTests/Support/Harness.swift: test targets
// cannot share sources.)
import Foundation
import Glibc
import XCTest

enum Proc {
    static var binDir: URL {
        var url = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        while url.pathComponents.count > 1
            && !FileManager.default.fileExists(atPath: url.appendingPathComponent("pulse").path)
        {
            url.deleteLastPathComponent()
        }
        return url
    }

    /// Ports already handed out by `freePort` in this process: a port picked
    /// and closed can come back from the kernel on the next pick, and two
    /// parts of one test (a nats-server and a node's Raft bind) then collide.
    private static let givenPortsLock = NSLock()
    nonisolated(unsafe) private static var givenPorts = Set<Int>()

    /// A TCP port on 127.0.0.1 that was free a moment ago and that no earlier
    /// call in this process returned.
    static func freePort() -> Int {
        for _ in 0..<64 {
            let port = ephemeralPort()
            if givenPortsLock.withLock({ givenPorts.insert(port).inserted }) { return port }
        }
        return ephemeralPort()
    }

    private static func ephemeralPort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
        }
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    static func tempDir(_ name: String) -> String {
        let path = NSTemporaryDirectory() + "backbeat-client-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    @discardableResult
    static func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(20_000)
        }
        return condition()
    }

    /// A TCP socket connected to 127.0.0.1:`port` (with a receive timeout
    /// when given), or nil; the caller closes it.
    static func connectLoopback(port: Int, receiveTimeoutSeconds: Int? = nil) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return nil }
        if let receiveTimeoutSeconds {
            var tv = timeval(tv_sec: receiveTimeoutSeconds, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        let rc = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard rc == 0 else {
            close(fd)
            return nil
        }
        guard !isSelfConnected(fd) else {
            close(fd)  // nobody listens: the socket met itself
            return nil
        }
        return fd
    }

    /// Whether a connected TCP socket's two ends are the same address and
    /// port: a connect that met nobody can still succeed, since polling a
    /// port of the ephemeral range can connect the socket to itself, which
    /// then holds the port the server was about to bind.
    static func isSelfConnected(_ fd: Int32) -> Bool {
        var local = sockaddr_in()
        var peer = sockaddr_in()
        var localLength = socklen_t(MemoryLayout<sockaddr_in>.size)
        var peerLength = localLength
        let gotLocal = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &localLength) }
        }
        let gotPeer = withUnsafeMutablePointer(to: &peer) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &peerLength) }
        }
        return gotLocal == 0 && gotPeer == 0 && local.sin_port == peer.sin_port
            && local.sin_addr.s_addr == peer.sin_addr.s_addr
    }

    /// One HTTP request to 127.0.0.1:`port` (Connection: close); (status, body) or nil.
    static func http(_ method: String, port: Int, path: String, body: String = "") -> (status: Int, body: Data)? {
        guard let fd = connectLoopback(port: port, receiveTimeoutSeconds: 3) else { return nil }
        defer { close(fd) }
        let request =
            "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            + "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
        _ = Array(request.utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var response = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            response.append(contentsOf: buffer[0..<n])
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n"),
            let status = Int(text.split(separator: " ").dropFirst().first ?? "")
        else { return nil }
        return (status, Data(text[split.upperBound...].utf8))
    }

    static func json(_ data: Data) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
    }
}

final class NatsServerProcess {
    let port = Proc.freePort()
    private let process = Process()
    var url: String { "nats://127.0.0.1:\(port)" }

    /// nats-server on a free loopback port; `arguments` are added (e.g. `-c conf`), and
    /// `environment` to the server's (the variables a configuration file names).
    init(arguments: [String] = [], environment: [String: String] = [:]) throws {
        let binary =
            ProcessInfo.processInfo.environment["NATS_SERVER"]
            ?? ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"].first {
                FileManager.default.isExecutableFile(atPath: $0)
            } ?? "nats-server"
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["-a", "127.0.0.1", "-p", "\(port)"] + arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let port = self.port
        guard Proc.waitUntil(seconds: 10, { Self.listening(port) })
        else { throw NSError(domain: "nats-server did not start", code: 1) }
    }

    static func listening(_ port: Int) -> Bool {
        guard let fd = Proc.connectLoopback(port: port) else { return false }
        close(fd)
        return true
    }

    deinit {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }
}

final class PulseNodeProcess {
    let process = Process()
    let logPath: String

    init(arguments: [String], logPath: String) throws {
        self.logPath = logPath
        process.executableURL = Proc.binDir.appendingPathComponent("pulse")
        process.arguments = arguments
        FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = FileHandle(forWritingAtPath: logPath)!
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func kill(_ signo: Int32) { Glibc.kill(process.processIdentifier, signo) }

    func stop() {
        guard process.isRunning else { return }
        kill(SIGTERM)
        if !Proc.waitUntil(seconds: 10, { !process.isRunning }) {
            kill(SIGKILL)
            process.waitUntilExit()
        }
    }

    deinit { if process.isRunning { kill(SIGKILL) } }
}

extension PulseNodeProcess {
    /// One bootstrapped node of `cluster` on `nats`, its data dir and log in `dir`, with a free
    /// admin port (returned); `extra` flags are appended.
    static func single(
        cluster: String, bpm: Int, maxBpm: Int = 600, nats: String, dir: String, extra: [String] = []
    ) throws -> (node: PulseNodeProcess, admin: Int) {
        let admin = Proc.freePort()
        let node = try PulseNodeProcess(
            arguments: [
                "-bootstrap", "-bpm", "\(bpm)", "-max-bpm", "\(maxBpm)", "-cluster", cluster, "-nats", nats,
                "-data-dir", dir + "/node", "-admin-port", "\(admin)",
            ] + extra, logPath: dir + "/node.log")
        return (node, admin)
    }
}

/// nats-server plus three bootstrapped `pulse` nodes on loopback.
final class PulseCluster {
    let nats: NatsServerProcess
    let dir: String
    let cluster: String
    let names = ["n1", "n2", "n3"]
    let raftPorts = (0..<3).map { _ in Proc.freePort() }
    let adminPorts = (0..<3).map { _ in Proc.freePort() }
    var nodes: [PulseNodeProcess?] = [nil, nil, nil]

    /// `extra(i)`: flags added to node i's command line.
    init(cluster: String, bpm: Int, maxBpm: Int, extra: (Int) -> [String] = { _ in [] }) throws {
        nats = try NatsServerProcess()
        dir = Proc.tempDir(cluster)
        self.cluster = cluster
        let peers = (0..<3).map { "\(names[$0])@127.0.0.1:\(raftPorts[$0])" }.joined(separator: ",")
        for i in 0..<3 {
            nodes[i] = try PulseNodeProcess(
                arguments: [
                    "-bootstrap", "-bpm", "\(bpm)", "-max-bpm", "\(maxBpm)", "-cluster", cluster, "-node-id", names[i],
                    "-raft-bind", "127.0.0.1:\(raftPorts[i])", "-peers", peers, "-nats", nats.url,
                    "-data-dir", "\(dir)/\(names[i])", "-admin-port", "\(adminPorts[i])",
                ] + extra(i), logPath: "\(dir)/\(names[i]).log")
        }
    }

    func leader(seconds: Double = 15) -> Int? {
        var found: Int?
        Proc.waitUntil(seconds: seconds) {
            found = (0..<3).first { i in
                guard nodes[i]?.process.isRunning == true,
                    let answer = Proc.http("GET", port: adminPorts[i], path: "/leader")
                else { return false }
                return Proc.json(answer.body)["is_leader"] as? Bool == true
            }
            return found != nil
        }
        return found
    }

    var logs: String {
        names.map { "--- \($0)\n" + ((try? String(contentsOfFile: "\(dir)/\($0).log", encoding: .utf8)) ?? "") }
            .joined(separator: "\n")
    }

    deinit {
        for node in nodes { node?.stop() }
        try? FileManager.default.removeItem(atPath: dir)
    }
}
