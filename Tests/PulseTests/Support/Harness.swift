// Test harness: a real nats-server on a free loopback port, `pulse`
// processes, and an independent NATS subscriber (the C client in its own
// threaded mode). Every wait is bounded in time.
import CNats
import Foundation
import Glibc
import XCTest

enum Harness {
    /// The directory holding the built `pulse` binary (next to the test bundle).
    static var binDir: URL {
        var url = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        while url.pathComponents.count > 1
            && !FileManager.default.fileExists(atPath: url.appendingPathComponent("pulse").path)
        {
            url.deleteLastPathComponent()
        }
        return url
    }

    static var pulsePath: String { binDir.appendingPathComponent("pulse").path }

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
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
        }
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    static func canConnect(port: Int) -> Bool {
        guard let fd = try? connectLoopback(port: port) else { return false }
        close(fd)
        return true
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

    /// A blocking TCP socket connected to 127.0.0.1:`port`, with `timeoutMs`
    /// as its receive and send timeouts (none when nil) and, when given, a
    /// `receiveBufferBytes` SO_RCVBUF set before connecting. The caller
    /// closes it; on failure nothing is left open and the error carries errno.
    static func connectLoopback(port: Int, timeoutMs: Int? = nil, receiveBufferBytes: Int32? = nil) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw NSError(domain: "socket", code: Int(errno)) }
        if var size = receiveBufferBytes {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        if let timeoutMs {
            var timeout = timeval(tv_sec: timeoutMs / 1000, tv_usec: (timeoutMs % 1000) * 1000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
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
            let code = errno
            close(fd)
            throw NSError(domain: "connect", code: Int(code))
        }
        guard !isSelfConnected(fd) else {
            close(fd)  // nobody listens: the socket met itself (see isSelfConnected)
            throw NSError(domain: "connect", code: Int(ECONNREFUSED))
        }
        return fd
    }

    /// One recv (at most 16 KiB) on `fd`, appended to `buffer`; false on EOF,
    /// error or timeout.
    static func receive(_ fd: Int32, appendingTo buffer: inout [UInt8]) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return false }
        buffer.append(contentsOf: chunk[0..<n])
        return true
    }

    /// Runs a bash script (bounded by `timeout`, then terminated); returns
    /// its exit status and its stdout and stderr together.
    @discardableResult
    static func sh(_ script: String, timeout: Double = 20) -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = ["-c", script]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        guard (try? process.run()) != nil else { return (-1, "cannot run bash") }
        if !Harness.waitUntil(seconds: timeout, { !process.isRunning }) { process.terminate() }
        process.waitUntilExit()
        return (
            process.terminationStatus,
            String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        )
    }

    static func tempDir(_ name: String) -> String {
        let path = NSTemporaryDirectory() + "pulse-test-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Polls `condition` every 20 ms until it holds or `seconds` pass.
    @discardableResult
    static func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            usleep(20_000)
        }
        return condition()
    }

    /// Waits until the pulse of `cluster` answers a timeline request through
    /// the server at `url`. Its requests ride a NATS connection of their own,
    /// which may still be connecting (or retrying its first connect) when the
    /// beat and the admin API are up; NATS answers "no responders" at once
    /// meanwhile (a CI run of ForgedReplyTests met 250 ms of it).
    @discardableResult
    static func waitForRequests(url: String, cluster: String, seconds: Double = 15) -> Bool {
        var nc: OpaquePointer?
        guard natsConnection_ConnectTo(&nc, url) == NATS_OK else { return false }
        defer { natsConnection_Destroy(nc) }
        return waitUntil(seconds: seconds) {
            var reply: OpaquePointer?
            guard
                natsConnection_RequestString(&reply, nc, "backbeat.\(cluster).request.timeline", "{}", 1000) == NATS_OK
            else { return false }
            natsMsg_Destroy(reply)
            return true
        }
    }
}

/// A real `nats-server` bound to 127.0.0.1 on a free port.
final class NatsServer {
    let port: Int
    private var process: Process?
    var url: String { "nats://127.0.0.1:\(port)" }
    /// Debian installs it in /usr/sbin; NATS_SERVER overrides.
    static let binary: String = {
        if let path = ProcessInfo.processInfo.environment["NATS_SERVER"] { return path }
        return ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"].first {
            FileManager.default.isExecutableFile(atPath: $0)
        } ?? "nats-server"
    }()

    /// With JetStream (`-js`, its store in a fresh temp dir) when `jetStream`.
    let jetStreamDir: String?

    /// Extra configuration (nats-server's config file syntax), e.g. `max_payload: 4096`.
    let configPath: String?

    init(port: Int = Harness.freePort(), jetStream: Bool = false, config: String? = nil) throws {
        self.port = port
        jetStreamDir = jetStream ? Harness.tempDir("js") : nil
        configPath = try config.map { text in
            let path = Harness.tempDir("nats-conf") + "/nats.conf"
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        try start()
    }

    func start() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments =
            (configPath.map { ["-c", $0] } ?? []) + ["-a", "127.0.0.1", "-p", "\(port)"]
            + (jetStreamDir.map { ["-js", "-sd", $0] } ?? [])
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        self.process = process
        guard Harness.waitUntil(seconds: 10, { Harness.canConnect(port: port) }) else {
            throw NSError(domain: "nats-server did not start on \(port)", code: 1)
        }
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: it reads nothing meanwhile.
    func pause(_ paused: Bool) {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, paused ? SIGSTOP : SIGCONT)
    }

    func stop() {
        guard let process, process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
        self.process = nil
    }

    deinit {
        stop()
        if let jetStreamDir { try? FileManager.default.removeItem(atPath: jetStreamDir) }
    }
}

/// A `pulse` child process with its stderr captured to a file.
final class PulseProcess {
    let process = Process()
    let logPath: String

    init(arguments: [String], logPath: String, environment: [String: String] = [:]) throws {
        self.logPath = logPath
        process.executableURL = URL(fileURLWithPath: Harness.pulsePath)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.merge(environment) { $1 }
        process.environment = env
        FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = FileHandle(forWritingAtPath: logPath)!
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func signal(_ signo: Int32) { kill(process.processIdentifier, signo) }

    /// Sends SIGTERM and waits (bounded); returns the exit status.
    @discardableResult
    func stop(timeout: Double = 10) -> Int32 {
        if process.isRunning { signal(SIGTERM) }
        if !Harness.waitUntil(seconds: timeout, { !process.isRunning }) {
            signal(SIGKILL)
            process.waitUntilExit()
        }
        return process.terminationStatus
    }

    deinit { if process.isRunning { signal(SIGKILL) } }
}

/// Runs `pulse` to completion (bounded) and returns (status, stdout, stderr).
func runPulse(_ arguments: [String], environment: [String: String] = [:], timeout: Double = 20) throws
    -> (status: Int32, stdout: String, stderr: String)
{
    let process = Process()
    process.executableURL = URL(fileURLWithPath: Harness.pulsePath)
    process.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    env.merge(environment) { $1 }
    process.environment = env
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    if !Harness.waitUntil(seconds: timeout, { !process.isRunning }) {
        kill(process.processIdentifier, SIGKILL)
    }
    process.waitUntilExit()
    let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    return (process.terminationStatus, stdout, stderr)
}

/// A frame as received by the independent subscriber.
struct ReceivedFrame {
    let raw: Data
    let receivedNs: Int64
    /// The subject it arrived on.
    var subject = ""
    var text: String { String(decoding: raw, as: UTF8.self) }
    var object: [String: Any] { (try? JSONSerialization.jsonObject(with: raw) as? [String: Any]) ?? [:] }
}

/// An independent NATS subscriber using the C client's own threads.
final class Subscriber {
    private var connection: OpaquePointer?
    private var subscription: OpaquePointer?
    private let lock = NSLock()
    private var frames: [ReceivedFrame] = []

    init(url: String, subject: String) throws {
        let opts = try Self.options(url: url)
        defer { natsOptions_Destroy(opts) }
        var status = natsConnection_Connect(&connection, opts)
        guard status == NATS_OK else { throw NSError(domain: "subscriber connect: \(status)", code: 2) }
        status = natsConnection_Subscribe(
            &subscription, connection, subject,
            { _, _, msg, closure in
                var ts = timespec()
                clock_gettime(CLOCK_REALTIME, &ts)
                let now = Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
                let data = Data(bytes: natsMsg_GetData(msg), count: Int(natsMsg_GetDataLength(msg)))
                let subject = String(cString: natsMsg_GetSubject(msg))
                natsMsg_Destroy(msg)
                Unmanaged<Subscriber>.fromOpaque(closure!).takeUnretainedValue().append(
                    ReceivedFrame(raw: data, receivedNs: now, subject: subject))
            }, Unmanaged.passUnretained(self).toOpaque())
        guard status == NATS_OK else { throw NSError(domain: "subscribe: \(status)", code: 3) }
        natsConnection_Flush(connection)
    }

    private static func options(url: String) throws -> OpaquePointer? {
        var opts: OpaquePointer?
        natsOptions_Create(&opts)
        natsOptions_SetURL(opts, url)
        natsOptions_SetMaxReconnect(opts, -1)
        natsOptions_SetReconnectWait(opts, 100)
        return opts
    }

    private func append(_ frame: ReceivedFrame) {
        lock.lock()
        frames.append(frame)
        lock.unlock()
    }

    var received: [ReceivedFrame] {
        lock.lock()
        defer { lock.unlock() }
        return frames
    }

    var count: Int { received.count }

    /// Waits (bounded) until at least `n` frames arrived.
    @discardableResult
    func wait(for n: Int, seconds: Double) -> Bool { Harness.waitUntil(seconds: seconds) { count >= n } }

    deinit {
        natsSubscription_Destroy(subscription)
        natsConnection_Destroy(connection)
    }
}
