// FuzzBeat — libFuzzer harness: a payload published on the beat subject.
//
// The input is `[8 bytes: receive-time offset, little endian][payload]`. The
// payload goes the way `PulseNode.handleEcho` (Service/PulseNode+Admin.swift)
// takes it: the one `BeatFrameDecoder`, then the `EchoPolicy` of a 3-node
// cluster against a fixed timeline at the receive time, then, for an accepted
// frame, the delivery latency (receive time − the frame's instant).
//
// What it checks: no trap anywhere; a decoded frame's fields are in their
// documented ranges; an accepted frame's index is within one beat of the
// timeline's current beat (requirements §10), so no remote number reaches
// the timeline math unchecked. Pure PulseCore API: no `#if` needed.
// Reproduce: `FuzzBeat <artifact>` (docs/fuzzing.md).
import PulseCore

/// 120 bpm from beat 0 at 2025-01-01T00:00:00Z, bars of 8.
private let timeline = Timeline(
    epoch: TempoEpoch(startBeat: 0, startNs: 1_735_689_600_000_000_000, bpm: 120), bar: 8, phaseCount: 3)
/// An hour into the timeline, the base of the receive time.
private let baseNs: Int64 = 1_735_693_200_000_000_000

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBeat(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = [UInt8](UnsafeRawBufferPointer(start: data, count: size))
    var offset: Int64 = 0
    for i in 0..<min(8, bytes.count) { offset |= Int64(bytes[i]) << (8 * Int64(i)) }
    // Receive times within ±~4.6 s of the base (a few beats either way), so acceptance is reachable.
    let receivedNs = baseNs + (offset % 4_611_686_018)
    let payload = Array(bytes.dropFirst(8))

    guard case .success(let frame) = BeatFrameDecoder.result(payload) else { return 0 }
    guard frame.beatIndex >= 0, (1...6000).contains(frame.tempoBpm), frame.windowId.utf8.count == 32 else {
        fatalError("FuzzBeat: decoded frame out of range: \(frame)")
    }
    for ownTerm: UInt64 in [0, 1, 7, UInt64.max] {
        var policy = EchoPolicy(
            clusterId: "chorus-aus-01", publishers: .known(["de-1", "de-2", "de-3"]), maxTermLead: 8)
        guard case .accept = policy.judge(frame, timeline: timeline, atTimelineNs: receivedNs, ownTerm: ownTerm)
        else { continue }
        let current = timeline.beat(atOrBeforeNs: receivedNs)
        guard abs(frame.beatIndex - current) <= 1 else {
            fatalError("FuzzBeat: accepted index \(frame.beatIndex) is not within one beat of \(current)")
        }
        _ = receivedNs - timeline.instantNs(ofBeat: frame.beatIndex)  // the latency the node records
    }
    return 0
}
