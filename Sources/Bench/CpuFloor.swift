// Bench/CpuFloor.swift — the CPU floor of one beat on this machine: what the
// cheapest possible timer-woken publisher spends per beat, measured in the
// same run, on the pulse's core at its priority.
//
// A thread sleeps on a CLOCK_REALTIME timerfd (through CLoop, as the pulse's
// loop does: epoll + timerfd, absolute instants one period apart) and on
// each wake writes one frame-sized `PUB` straight to the nats-server socket
// (one write(2), no client library, no TX timestamps, no subscription of
// its own). Its thread CPU time (CLOCK_THREAD_CPUTIME_ID) over the wakes is
// the floor; the write's share is measured separately. On a VM both a timer
// wake (idle → running) and a loopback write (it runs the server side's TCP
// receive and wake-up in the writer's context) cost tens of µs, so an
// absolute CPU-per-beat target must be read beside this floor.

import CLoop
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// CPU per beat of a bare timer wake + one frame write (µs), and the write's share.
struct CpuFloor {
    var usPerBeat: Double? = nil
    var writeUsPerBeat: Double? = nil
    var wakes = 0
    var source = "bare timerfd wake + one frame-sized write(2) to nats-server"
    var notes: [String] = []
}

/// Thread CPU time of the caller (ns).
func threadCPUTimeNs() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// A plain TCP connection to `url` (nats://host:port) past the NATS handshake
/// (INFO, CONNECT, PING/PONG), or an error text. Bounded by socket timeouts.
private func rawNatsConnect(_ url: String) -> Result<Int32, BenchError> {
    let hostPort = url.replacingOccurrences(of: "nats://", with: "").split(separator: ",").first.map(String.init) ?? ""
    let parts = hostPort.split(separator: ":")
    guard parts.count == 2, let port = UInt16(parts[1]) else {
        return .failure(BenchError("cpu floor: bad URL \(url)"))
    }
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return .failure(BenchError("cpu floor: socket: \(errno)")) }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    inet_pton(AF_INET, String(parts[0]), &address.sin_addr)
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard rc == 0 else {
        close(fd)
        return .failure(BenchError("cpu floor: connect \(hostPort): \(errno)"))
    }
    var one: Int32 = 1
    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    var buffer = [UInt8](repeating: 0, count: 8192)
    var seen = ""
    // INFO first, then our CONNECT + PING; wait for PONG (bounded reads).
    let hello = "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"pulse-bench-cpu-floor\"}\r\nPING\r\n"
    var sentHello = false
    for _ in 0..<20 where !seen.contains("PONG") {
        let n = read(fd, &buffer, buffer.count)
        guard n > 0 else { break }
        seen += String(decoding: buffer[0..<n], as: UTF8.self)
        if !sentHello, seen.contains("INFO") {
            sentHello = true
            _ = hello.withCString { write(fd, $0, strlen($0)) }
        }
    }
    guard seen.contains("PONG") else {
        close(fd)
        return .failure(BenchError("cpu floor: no NATS handshake with \(hostPort)"))
    }
    return .success(fd)
}

/// The floor: `seconds` of wakes at `bpm` on `cpu` at `priority`.
func measureCpuFloor(url: String, bpm: Int, seconds: Int, cpu: Int, priority: Int) -> CpuFloor {
    var floor = CpuFloor()
    let fd: Int32
    switch rawNatsConnect(url) {
    case .success(let s): fd = s
    case .failure(let e):
        floor.notes.append(e.description)
        return floor
    }
    defer { close(fd) }
    // A frame-sized PUB (the pulse's frames are ~240 bytes of JSON).
    let payload = String(repeating: "x", count: 242)
    let message = Array("PUB bench.cpufloor.\(getpid()) \(payload.utf8.count)\r\n\(payload)\r\n".utf8)
    let periodNs = Int64(60_000_000_000) / Int64(max(1, bpm))
    let wakes = max(1, Int(Int64(seconds) * 1_000_000_000 / periodNs))
    var total: Int64 = 0
    var writes: Int64 = 0
    var done = 0
    var problems: [String] = []
    let ok = runOnThread(seconds: Double(seconds) + 10) {
        if cloop_pin_to_cpu(Int32(cpu)) != 0 { problems.append("could not pin the cpu floor to cpu \(cpu)") }
        if priority > 0, cloop_set_fifo_priority(Int32(priority)) != 0 {
            problems.append("SCHED_FIFO \(priority) refused for the cpu floor")
        }
        _ = cloop_set_timer_slack_ns(1)
        guard let loop = cloop_create(8, 8) else {
            problems.append("cloop_create failed")
            return
        }
        defer { cloop_destroy(loop) }
        var token: UInt32 = 0
        guard cloop_timer_create(loop, CLOCK_REALTIME, &token) == 0 else {
            problems.append("timerfd_create failed")
            return
        }
        var events = [cloop_event_t](repeating: cloop_event_t(), count: 8)
        var target = (cloop_realtime_ns() / periodNs + 2) * periodNs
        // Warm-up wake, not counted.
        _ = cloop_timer_arm_at(loop, token, target, false)
        _ = cloop_wait(loop, &events, 8, periodNs * 3)
        _ = cloop_timer_read(loop, token)
        let start = threadCPUTimeNs()
        for _ in 0..<wakes {
            target += periodNs
            _ = cloop_timer_arm_at(loop, token, target, false)
            var fired = false
            for _ in 0..<(100 + Int(periodNs / 50_000_000)) where !fired {  // bounded: 50 ms waits
                let n = cloop_wait(loop, &events, 8, 50_000_000)
                if n > 0, events.prefix(Int(n)).contains(where: { $0.token == token }) {
                    _ = cloop_timer_read(loop, token)
                    let w0 = threadCPUTimeNs()
                    let written = message.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                    writes += threadCPUTimeNs() - w0
                    if written != message.count { problems.append("short write (\(written))") }
                    fired = true
                }
            }
            if !fired { break }
            done += 1
        }
        total = threadCPUTimeNs() - start
    }
    if !ok { problems.append("cpu floor did not finish in time") }
    if done > 0 {
        floor.wakes = done
        floor.usPerBeat = Double(total) / 1000 / Double(done)
        floor.writeUsPerBeat = Double(writes) / 1000 / Double(done)
    }
    floor.source += ", \(bpm)/min, cpu \(cpu)" + (priority > 0 ? ", SCHED_FIFO \(priority)" : "")
    floor.notes += Array(Set(problems)).sorted()
    return floor
}
