// examples/swift — a consumer on BackbeatClient that prints, for every beat,
//   beat 42 · work · window 3f2a… · next downbeat in 1.25 s
// and the events (gaps, leader and tempo changes, degraded frames).
//
// When no pulse answers it prints one line naming the server, the subject
// and the wait, and exits 1.
//
//   swift run backbeat-example [nats://127.0.0.1:4222] [cluster] [timeout seconds, default 5]
import BackbeatClient
import Foundation

let arguments = CommandLine.arguments
let url = arguments.count > 1 ? arguments[1] : "nats://127.0.0.1:4222"
let cluster = arguments.count > 2 ? arguments[2] : "chorus-aus-01"
var options = BackbeatClientOptions(url: url, clusterId: cluster)
if arguments.count > 3, let seconds = Double(arguments[3]) { options.connectTimeoutMs = Int64(seconds * 1000) }

/// One line, written at once (unbuffered, so a pipe sees it live).
func say(_ line: String) { FileHandle.standardOutput.write(Data((line + "\n").utf8)) }

do {
    let client = try await BackbeatClient.connect(options)
    if let now = try? client.beat() {
        // A late joiner knows where the beat is before any frame arrives.
        say("joined at beat \(now.index) · \(now.phase) (timeline from \(client.timeline?.nodeId ?? "?"))")
    }
    for await event in client.events {
        switch event {
        case .beat(let beat):
            let next = try client.nextDownbeat(after: beat.instantNs)
            let seconds = Double(next.instantNs - client.now()) / 1e9
            say(
                "beat \(beat.index) · \(beat.phase) · window \(beat.windowId.prefix(4))… · next downbeat in "
                    + String(format: "%.2f s", seconds))
        case .gap(let missed):
            say("gap: beats \(missed.lowerBound)...\(missed.upperBound) never arrived")
        case .leaderChanged(let term, _, let publisher):
            say("new leader \(publisher), term \(term)")
        case .tempoScheduled(let change):
            say("tempo change to \(change.bpm) bpm scheduled at beat \(change.atBeat)")
        case .tempoChanged(let bpm, let previous, let atBeat):
            say("tempo \(previous) → \(bpm) bpm at beat \(atBeat)")
        case .degraded(let beat):
            say("degraded frame for beat \(beat.index) (no leader)")
        case .refused(let reason):
            say("refused a frame: \(reason)")
        case .connection(let up):
            say(up ? "NATS connection back" : "NATS connection lost")
        case .timelineUpdated, .mismatch:
            break
        }
    }
} catch {
    FileHandle.standardError.write(Data("backbeat-example: \(error)\n".utf8))
    exit(1)
}
