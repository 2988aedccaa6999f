// FuzzControl — libFuzzer harness: a payload published on the control subject.
//
// The input is the NATS message payload. It goes the way `subscribeControl`
// (Sources/Pulse/Service/PulseNode+Admin.swift) takes it on a node that can
// commit: `AdminRouter.parseTempoBody`, then for a valid request the pure part
// of `TempoController.request` (`TempoRules.check`, `TempoRules.applyBeat` on a
// fixed timeline, the 202 body), then the reply encoding (`errorBody`, the JSON
// round trip that adds "status"). The node's Raft commit is left out.
//
// Before parsing, the bytes also go through the reply-subject and admin-token
// checks (`isValidReplySubject`, `controlTokenMatches`).
//
// What it checks: no trap anywhere on the way, and every reply is a JSON
// object with an integer "status" (a requester always gets an answer).
//
// Needs internal types: built with `-enable-testing` (`make fuzz`), and the body
// is compiled only in debug builds (type-checked by `swift build`) and in the
// fuzz build (`-DFUZZING`), so a plain `swift build -c release` does not fail.
// Reproduce: `FuzzControl <artifact>` (docs/fuzzing.md).
#if DEBUG || FUZZING
    @testable import Pulse
    import PulseCore
    import Foundation

    /// The timeline a node would be on: 120 bpm from beat 0 at 2025-01-01T00:00:00Z, 4/4.
    private let timeline = Timeline(
        epoch: TempoEpoch(startBeat: 0, startNs: 1_735_689_600_000_000_000, bpm: 120), bar: 4, phaseCount: 4)
    /// "Now" for the commit: an hour into the timeline.
    private let committedNs: Int64 = 1_735_693_200_000_000_000

    /// The reply `subscribeControl` publishes for `status` and `body`.
    private func answer(_ status: Int, _ body: Data) -> Data {
        var object = (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:]
        object["status"] = status
        return (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
    }

    /// The payload's way through the node, up to the reply.
    private func reply(to payload: [UInt8]) -> Data {
        let request: TempoRequest
        switch AdminRouter.parseTempoBody(payload, maxJustificationBytes: AdminLimits().maxJustificationBytes) {
        case .failure(let failure):
            return answer(400, PulseNode.errorBody(failure.message, failure.code))
        case .success(let parsed):
            request = parsed
        }
        if let refusal = TempoRules.check(
            requested: Int64(request.tempoBpm), current: timeline.epoch.bpm, minBpm: 20, maxBpm: 300,
            pending: timeline.pending)
        {
            return answer(refusal.httpStatus, PulseNode.errorBody(refusal.message, refusal.code))
        }
        let atBeat = TempoRules.applyBeat(
            timeline: timeline, committedNs: committedNs, commitRoundNs: 200_000_000,
            firstUnpublishedBeat: timeline.beat(atOrBeforeNs: committedNs) + 1)
        let change = ScheduledTempoChange(
            tempo_bpm: request.tempoBpm, previous_bpm: Int(timeline.epoch.bpm), apply_at_beat: atBeat,
            apply_at: RFC3339.string(unixMs: timeline.instantNs(ofBeat: atBeat) / 1_000_000),
            justification: request.justification)
        return answer(202, (try? JSONEncoder().encode(change)) ?? Data())
    }

    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzControl(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        let payload = [UInt8](UnsafeRawBufferPointer(start: data, count: size))
        // The checks `handleControl` makes before parsing: the reply subject and the admin token.
        _ = PulseNode.isValidReplySubject(String(decoding: payload.prefix(300), as: UTF8.self))
        _ = PulseNode.controlTokenMatches(Data(payload), Array("s3cret".utf8))
        let out = reply(to: payload)
        guard let object = try? JSONSerialization.jsonObject(with: out) as? [String: Any],
            object["status"] is Int
        else {
            fatalError(
                "FuzzControl: the reply is not a JSON object with a status: \(String(decoding: out, as: UTF8.self))")
        }
        return 0
    }
#endif
