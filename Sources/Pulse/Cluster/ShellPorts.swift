// Cluster/ShellPorts.swift — the seams of the node's shell (ClusterNode)
// that tests replace: the Raft network (`RaftLink`: RaftTransport, the lone
// voter's NoPeerLink, a recording fake in ConformanceTests) and the clocks.
import CLoop
import Raft

/// The Raft network as the node's shell uses it (RaftTransport; a recording
/// fake in ConformanceTests).
protocol RaftLink: AnyObject {
    func start() throws
    func stop()
    func send(_ message: Message)
    func setPeers(_ list: PeerList)
    var stats: RaftTransportStats { get }
}

extension RaftTransport: RaftLink {}

/// The link of a lone voter (a single node, `pulse` without -peers): no
/// peers, no socket. A one-voter core addresses no message to anyone; one
/// that would reach it is dropped and counted.
final class NoPeerLink: RaftLink {
    private(set) var stats = RaftTransportStats()
    func start() throws {}
    func stop() {}
    func send(_ message: Message) { stats.dropped &+= 1 }
    func setPeers(_ list: PeerList) {}
}

/// Where the node's shell reads the time (the loop's clocks; recorded ones
/// in ConformanceTests).
struct ShellClock {
    var monoNs: () -> Int64 = { cloop_monotonic_ns() }
    var wallNs: () -> Int64 = { cloop_realtime_ns() }
}
