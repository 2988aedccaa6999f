// Metrics: the standard `process_*` series (as the Prometheus client
// libraries export them), read from /proc at scrape time on the loop thread:
// CPU seconds, resident and virtual memory, open and maximum file
// descriptors, start time. Never on the beat path. A field /proc does not
// give (another kernel's format) is left out, never made up.
import Foundation
import Glibc

enum ProcessMetrics {
    /// The exposition lines of this process (text format 0.0.4).
    static func text() -> String {
        var out = ""
        func emit(_ name: String, _ type: String, _ help: String, _ value: Double?) {
            guard let value else { return }
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(format(value))\n"
        }
        let stat = readStat()
        emit(
            "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
            stat.map { $0.cpuSeconds })
        emit(
            "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
            stat.map { $0.residentBytes })
        emit(
            "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", stat.map { $0.virtualBytes })
        emit(
            "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
            stat.flatMap { $0.startTimeSeconds })
        emit("process_open_fds", "gauge", "Number of open file descriptors.", openFds().map(Double.init))
        var limit = rlimit()
        emit(
            "process_max_fds", "gauge", "Maximum number of open file descriptors.",
            getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 ? Double(limit.rlim_cur) : nil)
        return out
    }

    struct Stat: Equatable {
        var cpuSeconds: Double
        var virtualBytes: Double
        var residentBytes: Double
        var startTimeSeconds: Double?
    }

    /// Parses `/proc/self/stat` (proc(5)): fields after the command name,
    /// which is in parentheses and may itself contain spaces and `)`.
    /// `ticksPerSecond` and `pageBytes` from sysconf; `bootTimeSeconds` from
    /// /proc/stat's `btime`. Pure; nil for text it does not understand.
    static func parseStat(_ text: String, ticksPerSecond: Double, pageBytes: Double, bootTimeSeconds: Double?)
        -> Stat?
    {
        guard let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state): field n is fields[n - 3].
        func field(_ n: Int) -> Double? { fields.count > n - 3 ? Double(fields[n - 3]) : nil }
        guard ticksPerSecond > 0, let utime = field(14), let stime = field(15), let vsize = field(23),
            let rss = field(24)
        else { return nil }
        let start = field(22).flatMap { ticks in bootTimeSeconds.map { $0 + ticks / ticksPerSecond } }
        return Stat(
            cpuSeconds: (utime + stime) / ticksPerSecond, virtualBytes: vsize, residentBytes: rss * pageBytes,
            startTimeSeconds: start)
    }

    private static func readStat() -> Stat? {
        guard let text = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8) else { return nil }
        let boot = (try? String(contentsOfFile: "/proc/stat", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("btime ") }
            .flatMap { Double($0.dropFirst("btime ".count)) }
        return parseStat(
            text, ticksPerSecond: Double(sysconf(Int32(_SC_CLK_TCK))), pageBytes: Double(sysconf(Int32(_SC_PAGESIZE))),
            bootTimeSeconds: boot)
    }

    /// Entries of /proc/self/fd, without the directory's own descriptor.
    private static func openFds() -> Int? {
        guard let dir = opendir("/proc/self/fd") else { return nil }
        defer { closedir(dir) }
        var count = 0
        while let entry = readdir(dir) {
            let first = withUnsafeBytes(of: entry.pointee.d_name) { $0[0] }
            if first != UInt8(ascii: ".") { count += 1 }
        }
        return count - 1
    }

    private static func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }
}
