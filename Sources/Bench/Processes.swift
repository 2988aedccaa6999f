// Bench/Processes.swift — child processes and loopback plumbing.
//
// Every child (nats-server, pulse, stress-ng, wrk, cyclictest, the baseline)
// is started through `Child`, which records its pid in a fixed table; SIGINT,
// SIGTERM, SIGHUP and normal exit kill whatever is still running, so no child
// outlives the bench, also on error. Also here: free loopback ports, a
// bounded HTTP/1.1 GET against 127.0.0.1, tool lookup and /proc readings.

import CLoop
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

// MARK: - Child table (async-signal-safe cleanup)

private let childSlots = 64
private let childTable: UnsafeMutablePointer<Int32> = {
    let p = UnsafeMutablePointer<Int32>.allocate(capacity: childSlots)
    p.initialize(repeating: 0, count: childSlots)
    return p
}()

private func registerChild(_ pid: Int32) {
    for i in 0..<childSlots where childTable[i] == 0 {
        childTable[i] = pid
        return
    }
}

private func unregisterChild(_ pid: Int32) {
    for i in 0..<childSlots where childTable[i] == pid { childTable[i] = 0 }
}

/// Kills every registered child with SIGKILL (safe inside a signal handler).
func killAllChildren() {
    for i in 0..<childSlots where childTable[i] > 0 {
        kill(childTable[i], SIGKILL)
        childTable[i] = 0
    }
}

/// Installs the handlers that kill children on SIGINT/SIGTERM/SIGHUP and at exit.
func installChildCleanup() {
    atexit { killAllChildren() }
    for signo in [SIGINT, SIGTERM, SIGHUP] {
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { signo in
            killAllChildren()
            _exit(128 + signo)
        }
        sigemptyset(&action.sa_mask)
        sigaction(signo, &action, nil)
    }
}

// MARK: - Child

/// A child process with output to a file (or discarded); stopped with a bounded wait.
final class Child {
    let name: String
    let process = Process()
    let outputPath: String?

    /// `environment` is added to Bench's own (e.g. libfaketime's for a skewed clock).
    init(
        name: String, path: String, arguments: [String], outputPath: String? = nil,
        environment: [String: String] = [:]
    ) throws {
        self.name = name
        self.outputPath = outputPath
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        process.standardInput = FileHandle.nullDevice
        if let outputPath {
            FileManager.default.createFile(atPath: outputPath, contents: nil)
            guard let handle = FileHandle(forWritingAtPath: outputPath) else {
                throw BenchError("cannot write \(outputPath)")
            }
            process.standardOutput = handle
            process.standardError = handle
        } else {
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
        }
        try process.run()
        registerChild(process.processIdentifier)
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }
    var output: String { outputPath.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) } ?? "" }

    /// Waits (bounded) for the child to exit by itself; kills it when time is up.
    @discardableResult
    func wait(seconds: Double) -> Int32 {
        if !waitUntil(seconds: seconds, { !process.isRunning }) {
            kill(pid, SIGKILL)
        }
        process.waitUntilExit()
        unregisterChild(pid)
        return process.terminationStatus
    }

    /// `signal` (SIGTERM unless told), a bounded wait, then SIGKILL.
    @discardableResult
    func stop(seconds: Double = 5, signal: Int32 = SIGTERM) -> Int32 {
        if process.isRunning { kill(pid, signal) }
        return wait(seconds: seconds)
    }

    deinit {
        if process.isRunning { kill(pid, SIGKILL) }
        unregisterChild(pid)
    }
}

struct BenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Polls `condition` every 10 ms until it holds or `seconds` pass.
@discardableResult
func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = cloop_monotonic_ns() + Int64(seconds * 1e9)
    while cloop_monotonic_ns() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

func sleepSeconds(_ s: Double) {
    guard s > 0 else { return }
    var ts = timespec(tv_sec: Int(s), tv_nsec: Int((s - Double(Int(s))) * 1e9))
    var rest = timespec()
    while nanosleep(&ts, &rest) == -1 && errno == EINTR { ts = rest }
}

/// Sleeps until CLOCK_REALTIME reaches `ns`.
func sleepUntilRealtime(_ ns: Int64) {
    var ts = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
    while clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, nil) == EINTR {}
}

// MARK: - Tools

/// The absolute path of `tool` on PATH (plus the sbin directories), or nil.
func findTool(_ tool: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    let dirs = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/usr/local/sbin", "/sbin"]
    for dir in dirs {
        let candidate = dir + "/" + tool
        if access(candidate, X_OK) == 0 { return candidate }
    }
    return nil
}

/// The directory of the running Bench executable (the `pulse` binary sits beside it).
func executableDirectory() -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    guard n > 0 else { return "." }
    let path = String(cString: buf)
    return (path as NSString).deletingLastPathComponent
}

func makeTempDir(_ name: String) -> String {
    let path = NSTemporaryDirectory() + "pulse-bench-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

// MARK: - Loopback sockets

private func loopbackAddress(port: Int) -> sockaddr_in {
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = UInt16(port).bigEndian
    return addr
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = loopbackAddress(port: 0)
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
    }
    _ = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// A connected TCP socket to 127.0.0.1:port with send/receive timeouts, or -1.
func connectLoopback(port: Int, timeoutMs: Int = 2000) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return -1 }
    var tv = timeval(tv_sec: timeoutMs / 1000, tv_usec: (timeoutMs % 1000) * 1000)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var addr = loopbackAddress(port: port)
    let rc = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    if rc != 0 {
        close(fd)
        return -1
    }
    return fd
}

func canConnect(port: Int) -> Bool {
    let fd = connectLoopback(port: port, timeoutMs: 500)
    if fd >= 0 { close(fd) }
    return fd >= 0
}

/// `GET path` on 127.0.0.1:port, bounded in size (16 MiB) and time (the
/// socket timeouts); returns (status, body) or nil.
func httpGet(port: Int, path: String, timeoutMs: Int = 3000) -> (status: Int, body: [UInt8])? {
    let fd = connectLoopback(port: port, timeoutMs: timeoutMs)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
    guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count
    else { return nil }
    var data: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    var headerEnd: Int? = nil
    var contentLength: Int? = nil
    while data.count < 16 << 20 {
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        data.append(contentsOf: chunk[0..<n])
        if headerEnd == nil, let end = findHeaderEnd(data) {
            headerEnd = end
            let head = String(decoding: data[0..<end], as: UTF8.self).lowercased()
            for line in head.split(separator: "\r\n") where line.hasPrefix("content-length:") {
                contentLength = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces))
            }
        }
        if let headerEnd, let contentLength, data.count >= headerEnd + 4 + contentLength { break }
    }
    guard let headerEnd else { return nil }
    let statusLine = String(decoding: data[0..<headerEnd], as: UTF8.self).split(separator: " ")
    guard statusLine.count >= 2, let status = Int(statusLine[1]) else { return nil }
    var body = Array(data[(headerEnd + 4)...])
    if let contentLength, body.count > contentLength { body = Array(body[0..<contentLength]) }
    return (status, body)
}

private func findHeaderEnd(_ data: [UInt8]) -> Int? {
    guard data.count >= 4 else { return nil }
    for i in 0...(data.count - 4)
    where data[i] == 13 && data[i + 1] == 10 && data[i + 2] == 13 && data[i + 3] == 10 {
        return i
    }
    return nil
}

// MARK: - /proc

/// CPU time of every thread of `pid` in nanoseconds: the sum of
/// /proc/<pid>/task/*/schedstat (ns resolution; exited threads are not
/// counted), else utime + stime from /proc/<pid>/stat (clock ticks).
func processCPUNs(_ pid: Int32) -> Int64? {
    if let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"), !tasks.isEmpty {
        var total: Int64 = 0
        var ok = true
        for t in tasks {
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/schedstat", encoding: .utf8),
                let first = text.split(separator: " ").first, let ns = Int64(first)
            else {
                ok = false
                break
            }
            total += ns
        }
        if ok { return total }
    }
    return processTickCPUNs(pid)
}

/// CPU time of one thread `tid` of `pid` in nanoseconds
/// (/proc/<pid>/task/<tid>/schedstat), or nil. The pulse's loop runs on its
/// main thread, so its loop thread is `tid == pid`.
func threadCPUNs(_ pid: Int32, tid: Int32) -> Int64? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/schedstat", encoding: .utf8),
        let first = text.split(separator: " ").first
    else { return nil }
    return Int64(first)
}

func processTickCPUNs(_ pid: Int32) -> Int64? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = text.lastIndex(of: ")")
    else { return nil }
    // Fields after the command: state is field 3; utime and stime are fields 14 and 15.
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 13, let utime = Int64(fields[11]), let stime = Int64(fields[12]) else { return nil }
    let ticks = Int64(sysconf(Int32(_SC_CLK_TCK)))
    return (utime + stime) * 1_000_000_000 / max(ticks, 1)
}

/// Ticks the hypervisor took from `cpu` since boot (/proc/stat's steal), or nil.
func stealTicks(cpu: Int) -> Int64? {
    guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
        let line = text.split(separator: "\n").first(where: { $0.hasPrefix("cpu\(cpu) ") })
    else { return nil }
    let fields = line.split(separator: " ")
    return fields.count > 8 ? Int64(fields[8]) : nil
}

/// The cores this process may run on.
func onlineCPUs() -> Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

/// Pins the calling thread (and every thread and process it creates later) to
/// `cpu` (CLoop's helper: Glibc's module does not export sched_setaffinity).
func pinCurrentThread(to cpu: Int) -> Bool { cloop_pin_to_cpu(Int32(cpu)) == 0 }
