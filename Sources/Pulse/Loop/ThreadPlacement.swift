// Loop: where helper threads run. The loop thread may be pinned to one core
// at SCHED_FIFO (-cpu, -rt-priority); every thread created after that
// inherits both, so library threads (NATS delivery, reconnect, timers) and
// libdispatch workers would run on the beat core at real-time priority. Only
// the loop thread belongs there.
import CLoop
import Glibc

/// Placement of threads other than the loop thread: unpinned (the process's
/// start-up CPU set) at normal priority (SCHED_OTHER, nice 0).
enum ThreadPlacement {
    /// Moves the calling thread off the beat core, once per thread (a
    /// thread-local flag makes later calls one load). Call it first thing in
    /// any callback or work item that runs on a thread we did not create:
    /// library callback threads, `DispatchQueue` work items (storage fsync
    /// queues: the first line of each block submitted to them).
    @inline(__always)
    static func placeCurrentHelperThread() {
        _ = cloop_thread_place_helper_once()
    }

    /// Runs `body` with the calling thread temporarily unpinned at normal
    /// priority, so that threads `body` creates inherit that placement
    /// (pthread_create copies the creator's affinity and, by default, its
    /// policy), then restores the caller's placement. For the loop thread
    /// around calls that start library threads (a NATS subscription's
    /// delivery thread) or the first submission to a dispatch queue. Not for
    /// the beat path: four syscalls.
    static func runUnpinned<T>(_ body: () throws -> T) rethrows -> T {
        var saved = cloop_placement_t()
        guard cloop_placement_save(&saved) == 0 else { return try body() }
        let pinnedOrRealtime = saved.policy != SCHED_OTHER || saved.cpu_count < startupCPUCount
        guard pinnedOrRealtime else { return try body() }
        _ = cloop_thread_place_helper()
        defer {
            // Failing to restore what the operator asked for (-cpu,
            // -rt-priority) is a broken invariant of this process: stop loudly.
            let rc = cloop_placement_restore(&saved)
            precondition(rc == 0, "restoring the loop thread's placement: \(String(cString: strerror(-rc)))")
        }
        return try body()
    }

    /// CPUs in the process's start-up affinity mask (captured at load time,
    /// before anything could pin).
    static var startupCPUCount: Int32 { cloop_startup_cpu_count() }
}
