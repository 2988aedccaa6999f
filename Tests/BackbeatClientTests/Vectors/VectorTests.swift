// The Swift client against docs/vectors (the shared conformance vectors):
// every case is recomputed from the file's inputs with the client's code and
// must give the file's outputs. `BACKBEAT_WRITE_VECTORS=1` regenerates the
// files first (VectorGenerator).
import BackbeatClient
import Foundation
import PulseCore
import XCTest

final class VectorTests: XCTestCase {
    override class func setUp() {
        super.setUp()
        guard ProcessInfo.processInfo.environment["BACKBEAT_WRITE_VECTORS"] == "1" else { return }
        do {
            try VectorFiles.write(try VectorGenerator.timelineVectors(), "timeline.json")
            try VectorFiles.write(try VectorGenerator.tempoVectors(), "tempo.json")
            try VectorFiles.write(try VectorGenerator.frameVectors(), "frames.json")
            try VectorFiles.write(try VectorGenerator.sequenceVectors(), "sequences.json")
        } catch {
            fatalError("writing docs/vectors: \(error)")
        }
    }

    func testTimeline() throws {
        let file = try VectorFiles.read("timeline.json", as: TimelineVectors.self)
        XCTAssertGreaterThanOrEqual(file.cases.count, 5)
        for c in file.cases {
            let t = try VectorGenerator.timeline(c.timeline)
            for q in c.at {
                XCTAssertEqual(VectorGenerator.timeQuery(t, q.t_ns, quantum: q.quantum), q, "\(c.name) at \(q.t_ns)")
            }
            for b in c.beats {
                XCTAssertEqual(VectorGenerator.beatQuery(t, b.beat), b, "\(c.name) beat \(b.beat)")
            }
        }
    }

    func testTempo() throws {
        let file = try VectorFiles.read("tempo.json", as: TempoVectors.self)
        XCTAssertGreaterThanOrEqual(file.cases.count, 5)
        for c in file.cases {
            var got = try VectorGenerator.tempoCase(c.name, c.timeline, c.change)
            if got.result == "scheduled" {
                // The file's queries, recomputed (not the generator's choice of them).
                var spec = c.timeline
                spec.pending = c.change
                let t = try VectorGenerator.timeline(spec)
                got.instants = c.instants.map {
                    InstantQuery(beat: $0.beat, instant_ns: t.instantNs(ofBeat: $0.beat), bpm: t.bpm(ofBeat: $0.beat))
                }
                got.positions = c.positions.map {
                    let p = t.timeline.position(atNs: $0.t_ns)
                    return PositionQuery(t_ns: $0.t_ns, beat: p.beat, offset_ns: p.offsetNs, length_ns: p.lengthNs)
                }
            }
            XCTAssertEqual(got, c, c.name)
        }
    }

    func testFrames() throws {
        let file = try VectorFiles.read("frames.json", as: FrameVectors.self)
        XCTAssertGreaterThanOrEqual(file.cases.count, 40)
        for c in file.cases {
            XCTAssertEqual(VectorGenerator.judge(c), c, c.name)
        }
    }

    func testSequences() throws {
        let file = try VectorFiles.read("sequences.json", as: SequenceVectors.self)
        XCTAssertGreaterThanOrEqual(file.cases.count, 10)
        for c in file.cases {
            let inputs: [VectorGenerator.Input] = c.steps.map {
                if let text = $0.timeline { return .timeline(text) }
                return .frame($0.frame ?? "", receivedNs: $0.received_ns ?? 0)
            }
            let got = VectorGenerator.run(clusterId: c.cluster_id, inputs)
            XCTAssertEqual(got.count, c.steps.count, c.name)
            for (i, (g, want)) in zip(got, c.steps).enumerated() {
                XCTAssertEqual(g, want, "\(c.name), step \(i)")
            }
        }
    }
}
