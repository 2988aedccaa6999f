// What the KV lease unit tests share: the committed epoch their nodes run
// on, and a node that applied it from another holder's record.
import PulseCore
import PulsePolicy
import XCTest

enum KVLeaseFixture {
    static let startNs: Int64 = 1_800_000_000_000_000_000
    /// 120 bpm from `startNs`, a bar of 4, one phase.
    static let epoch = ClusterCommand.epoch(startBeat: 0, startNs: startNs, bpm: 120, bar: 4, phases: ["beat"])

    /// Node `id`, not holding the key, with `epoch` applied from another
    /// holder's record of `term`, watched at `revision`.
    static func node(_ id: String, term: UInt64 = 3, revision: UInt64 = 3) throws -> KVLeadership {
        let flags = try TimelineShape(bar: 4, phases: ["beat"])
        let record = try XCTUnwrap(KVLeaseTimeline(flags: flags).write(epoch, term: term))
        var timeline = KVLeaseTimeline(flags: flags)
        _ = timeline.apply(record.value, revision: revision)
        return KVLeadership(
            lease: KVLease(timing: KVLeaseTiming(), owner: "\(id) 1-2", nowMonoNs: 0), timeline: timeline)
    }
}
