// Bench/CpuFloor.swift — the CPU floor of one beat on this machine: what the
// cheapest possible timer-woken publisher spends per beat, measured in the
// same run, on the pulse's core at its priority. Since issue 24 it comes from
// the bare C publisher's timer-only run (SendFloor.swift, Sources/BenchFloor):
// one CLOCK_REALTIME timerfd wake through epoll and one write(2) of a real
// frame's `PUB` to the same nats-server, nothing else. On a VM both a timer
// wake (idle → running) and a loopback write (it runs the server side's TCP
// receive and wake-up in the writer's context) cost tens of µs, so the
// pulse's CPU per beat is judged as a ratio to it.

/// CPU per beat of a bare timer wake + one frame write (µs), and the write's share.
struct CpuFloor {
    var usPerBeat: Double? = nil
    var writeUsPerBeat: Double? = nil
    var wakes = 0
    var source = "bare timerfd wake + one frame-sized write(2) to nats-server"
    var notes: [String] = []
}
