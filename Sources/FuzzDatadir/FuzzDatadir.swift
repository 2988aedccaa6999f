// FuzzDatadir — libFuzzer harness: the files of a data dir.
//
// The input is `[kind byte][file bytes]`; kind % 6 picks the file's pure
// parser, the same the node runs at start-up: 0 `epoch.json`
// (`DataDirFiles.parseEpoch`), 1 `node_id` (`DataDirFiles.parseNodeId`),
// 2 `raft/hardstate` (`RaftStore.parseHardState`), 3 `raft/snapshot`
// (`RaftStore.parseSnapshot`), 4 `raft/log` (`RaftStore.scanLog`, then
// `RaftStore.checkConsistency` against a fresh hard state), 5 a backup file
// (`BackupFile.parse`, what `pulse restore` reads).
//
// What it checks: no trap on any bytes; what a parser accepts is usable: an
// accepted epoch's timeline computes beats, instants and deadlines anywhere in
// the supported range (1970…2200) without overflow (`TempoEpoch.validated`'s guarantee), an accepted log's
// entries are contiguous.
// Needs internal types (`@testable import Pulse`), so the body is compiled
// only in debug and fuzz builds (docs/fuzzing.md). Reproduce: `FuzzDatadir <artifact>`.
#if DEBUG || FUZZING
    @testable import Pulse
    import PulseCore
    import Raft

    @_cdecl("LLVMFuzzerTestOneInput")
    public func fuzzDataDir(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
        let bytes = [UInt8](UnsafeRawBufferPointer(start: data, count: size))
        guard let kind = bytes.first else { return 0 }
        let file = Array(bytes.dropFirst())
        switch kind % 6 {
        case 0:
            guard let stored = try? DataDirFiles.parseEpoch(file) else { return 0 }
            let epoch = TempoEpoch(startBeat: stored.startBeat, startNs: stored.startNs, bpm: stored.bpm)
            let timeline = Timeline(epoch: epoch, bar: stored.bar, phaseCount: 1)
            // Every instant of the supported range (TempoEpoch.validated's guarantee): its ends and the start.
            for t in [TempoEpoch.supportedNs.lowerBound, stored.startNs, TempoEpoch.supportedNs.upperBound] {
                let k = timeline.beat(atOrBeforeNs: t)
                _ = timeline.instantNs(ofBeat: k + 1)
                _ = timeline.deadlineNs(ofBeat: k)
            }
        case 1:
            _ = try? DataDirFiles.parseNodeId(file)
        case 2:
            _ = try? RaftStore.parseHardState(file)
        case 3:
            _ = try? RaftStore.parseSnapshot(file)
        case 5:
            _ = try? BackupFile.parse(file)
        default:
            guard let scan = try? RaftStore.scanLog(file) else { return 0 }
            for (a, b) in zip(scan.entries, scan.entries.dropFirst()) where b.index != a.index + 1 {
                fatalError("FuzzDatadir: scanLog accepted a gap: \(a.index) then \(b.index)")
            }
            _ = try? RaftStore.checkConsistency(hardState: HardState(), snapshot: nil, entries: scan.entries)
        }
        return 0
    }
#endif
