// Bench/main.swift — entry point: parses the command line, starts nats-server,
// runs the chosen scenarios with their same-run floors and the baseline, and
// prints / writes the report. See docs/benchmark.md for how to read it.
//
// Order (each step bounded in time): idle floors → idle → baseline → per001
// (shares the idle floors) → election (3-node cluster, leader killed; shares
// the idle floors) → load (stress-ng on the other core; floors under load,
// then the pulse under load with wrk on its admin API).

import CLoop
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

setvbuf(stdout, nil, _IOLBF, 0)
let argv = Array(CommandLine.arguments.dropFirst())
if argv.first == "__baseline" { baselineChildMain(Array(argv.dropFirst())) }

let options = parseArguments(argv)
func log(_ s: String) { fputs("Bench: \(s)\n", stderr) }
let pulseBinary: PulseBinary
do {
    pulseBinary = try resolvePulseBinary(
        environment: ProcessInfo.processInfo.environment, allowDebug: options.allowDebug, log: log)
} catch {
    log("error: \(error)")
    exit(1)
}
log("measuring \(pulseBinary.path): \(pulseBinary.version), a \(pulseBinary.mode) build (\(pulseBinary.origin))")
installChildCleanup()
let started = cloop_monotonic_ns()
let ctx = BenchContext(options: options, pulse: pulseBinary)
guard ctx.cpu < onlineCPUs() else { usageError("--cpu \(ctx.cpu): this machine has \(onlineCPUs()) cores") }
// Bench itself (and what it starts: nats-server, stress-ng, wrk, the
// subscriber's threads) stays off the pulse's core; the pulse, the floors and
// the baseline pin themselves to it. (One other core: CLoop pins to one.)
if let other = ctx.otherCPUs.first, !pinCurrentThread(to: other) {
    ctx.notes.append("could not pin Bench itself to cpu \(other)")
}

func shell(_ path: String, _ args: [String]) -> String? {
    guard let child = try? Child(name: path, path: path, arguments: args, outputPath: ctx.tempDir + "/cmd.out") else {
        return nil
    }
    return child.wait(seconds: 10) == 0 ? child.output.trimmingCharacters(in: .whitespacesAndNewlines) : nil
}

func machineInfo() -> MachineInfo {
    var name = utsname()
    uname(&name)
    let kernel = withUnsafeBytes(of: &name.release) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
    let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
    let model =
        cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
        .map { $0.split(separator: ":", maxSplits: 1).last!.trimmingCharacters(in: .whitespaces) } ?? "unknown cpu"
    let commit = findTool("git").flatMap { shell($0, ["rev-parse", "--short", "HEAD"]) } ?? "unknown"
    let dirty =
        findTool("git").flatMap { shell($0, ["status", "--porcelain", "--untracked-files=no"]) }.map {
            $0.isEmpty ? "" : "+dirty"
        } ?? ""
    let swift =
        findTool("swift").flatMap { shell($0, ["--version"]) }?.split(separator: "\n").first.map(String.init)
        ?? "swift ?"
    let formatter = ISO8601DateFormatter()
    return MachineInfo(
        date: formatter.string(from: Date()), commit: commit + dirty, cpuModel: model, cpus: onlineCPUs(),
        kernel: kernel,
        swift: swift)
}

var report = BenchReport(machine: machineInfo(), ctx: ctx)
// `--soak` runs the soak alone.
let wants = options.soakSeconds == nil ? Set(options.scenarios) : []
let needsNats = !wants.isEmpty || options.soakSeconds != nil
var nats: Child? = nil
if needsNats {
    do {
        nats = try startNatsServer(ctx)
    } catch {
        log("error: \(error)")
        killAllChildren()
        exit(1)
    }
}

/// Scenarios that could not run; any makes the exit status 1.
var failedScenarios: [String] = []

func attempt(_ name: String, _ body: () throws -> Void) {
    do { try body() } catch {
        ctx.notes.append("\(name) failed: \(error)")
        log("\(name) failed: \(error)")
        failedScenarios.append(name)
    }
}

var idleFloors: (timer: Floor, nats: Floor)? = nil
if !wants.intersection(["idle", "baseline", "per001", "shared", "signed", "flood", "flood-signed", "flood-control"])
    .isEmpty
{
    let periodUs = 60_000_000 / options.bpm
    log(
        "idle floors (\(options.seconds) s timer-wake at 1 ms, \(options.seconds) s at the period \(periodUs) µs, \(options.seconds) s NATS)…"
    )
    let timer = measureTimerFloor(seconds: options.seconds, cpu: ctx.cpu, priority: ctx.priority, tempDir: ctx.tempDir)
    let periodFloor =
        periodUs == 1000
        ? timer
        : measureTimerFloor(
            seconds: options.seconds, cpu: ctx.cpu, priority: ctx.priority, tempDir: ctx.tempDir, intervalUs: periodUs)
    let natsFloor = measureNatsFloor(
        url: ctx.natsURL, bpm: options.bpm, seconds: options.seconds, cpu: ctx.cpu, priority: ctx.priority)
    idleFloors = (timer, natsFloor)
    // The bare C publisher (issue 24), woken the pulse's two ways: its spin
    // run is the send-path floor of `idle`, its timer-only run the wake and
    // CPU floor of `shared`.
    var sendFloors: (spin: SendFloor?, timerOnly: SendFloor?) = (nil, nil)
    var cpuFloor: CpuFloor? = nil
    if !wants.intersection(["idle", "signed"]).isEmpty {
        log("send floor, spin (\(options.seconds) s of a bare C publisher at \(options.bpm)/min)…")
        sendFloors.spin = measureSendFloor(
            url: ctx.natsURL, bpm: options.bpm, seconds: options.seconds, cpu: ctx.cpu, priority: ctx.priority,
            leadNs: 1_000_000)
    }
    if !wants.intersection(["shared", "signed"]).isEmpty {
        log("send floor, timer only (\(options.seconds) s of a bare C publisher at \(options.bpm)/min)…")
        let floor = measureSendFloor(
            url: ctx.natsURL, bpm: options.bpm, seconds: options.seconds, cpu: ctx.cpu, priority: ctx.priority,
            leadNs: 0)
        sendFloors.timerOnly = floor
        cpuFloor = CpuFloor(floor)
    }
    for floor in [sendFloors.spin, sendFloors.timerOnly].compactMap({ $0 }) {
        ctx.notes += floor.notes.map { "send floor (\(floor.leadNs > 0 ? "spin" : "timer only")): \($0)" }
    }
    if wants.contains("idle") {
        log("idle: pulse at \(options.bpm) bpm…")
        attempt("idle") {
            report.scenarios.append(
                try runPulseScenario(
                    ctx, name: "idle", bpm: options.bpm, timerFloor: timer, natsFloor: natsFloor, withHTTPLoad: false,
                    periodFloor: periodFloor, cpuFloor: cpuFloor, sendFloor: sendFloors.spin))
        }
    }
    if wants.contains("shared") {
        log("shared: pulse at \(options.bpm) bpm, -spin-max-us 0 (timer only)…")
        attempt("shared") {
            report.scenarios.append(
                try runPulseScenario(
                    ctx, name: "shared", bpm: options.bpm, timerFloor: timer, natsFloor: natsFloor,
                    withHTTPLoad: false, periodFloor: periodFloor, cpuFloor: cpuFloor, sendFloor: sendFloors.timerOnly,
                    extraArgs: ["-spin-max-us", "0"])
            )
        }
    }
    if wants.contains("signed") {
        log("signed: pulse at \(options.bpm) bpm with -sign-key (every frame signed)…")
        attempt("signed") {
            report.scenarios.append(
                try runSignedScenario(
                    ctx, bpm: options.bpm, timerFloor: timer, natsFloor: natsFloor, periodFloor: periodFloor,
                    cpuFloor: cpuFloor, idle: report.scenarios.first { $0.name == "idle" }))
        }
    }
    if wants.contains("baseline") {
        log("baseline: DispatchSourceTimer + JSONEncoder at \(options.bpm) bpm…")
        attempt("baseline") {
            report.baseline = try runBaseline(ctx, bpm: options.bpm, timerFloor: timer, natsFloor: natsFloor)
            report.baseline?.periodFloor = periodFloor
        }
    }
    for kind in [FloodKind.timeline, .signedTimeline, .control] where wants.contains(kind.scenario) {
        log("\(kind.scenario): 3-node cluster at \(options.bpm) bpm idle, then every node under 10,000 \(kind.what)/s…")
        attempt(kind.scenario) {
            report.scenarios.append(
                try runFloodScenario(ctx, bpm: options.bpm, timerFloor: timer, natsFloor: natsFloor, kind: kind))
        }
    }
    if wants.contains("per001") {
        log("per001: pulse at 120 bpm…")
        attempt("per001") {
            var r = try runPulseScenario(
                ctx, name: "per001", bpm: 120, timerFloor: timer, natsFloor: natsFloor, withHTTPLoad: false)
            r.notes.append("floors shared with idle (NATS floor at \(options.bpm)/min)")
            report.scenarios.append(r)
        }
    }
}

for name in ["election", "election-tls", "election-kv"] where wants.contains(name) {
    log(
        "\(name): 3-node cluster at \(options.bpm) bpm, \(electionRounds(seconds: options.seconds)) leader kills and a graceful stop…"
    )
    attempt(name) {
        let floors = idleFloors ?? (Floor(source: "not measured"), Floor(source: "not measured"))
        var r = try runElectionScenario(
            ctx, bpm: options.bpm, timerFloor: floors.timer, natsFloor: floors.nats, tls: name == "election-tls",
            natsKV: name == "election-kv",
            plain: report.scenarios.last { $0.name == "election" }?.election)
        if idleFloors != nil { r.notes.append("floors shared with idle") }
        report.scenarios.append(r)
    }
}

if wants.contains("fanout") {
    log("fanout: 3 nats-servers with routes, 1/100/1000 subscribers at \(options.bpm) bpm…")
    attempt("fanout") { report.scenarios.append(try runFanoutScenario(ctx, bpm: options.bpm)) }
}

if let soakSeconds = options.soakSeconds {
    log("soak: one pulse at \(options.bpm) bpm for \(soakSeconds) s at normal priority…")
    attempt("soak") { report.soak = try runSoak(ctx, seconds: soakSeconds, bpm: options.bpm, log: log) }
}

if wants.contains("drift") {
    for leader in [0, 1] {
        log("drift: 3-node cluster, n3's clock 500 ppm fast, 60 s following n\(leader + 1), then alone…")
        attempt("drift") { report.drift.append(try runDriftScenario(ctx, bpm: options.bpm, leader: leader)) }
    }
}

if wants.contains("scale") {
    log("scale: cost against cluster size, subscribers, timeline requests/s and tempo…")
    attempt("scale") { report.scale = try runScale(ctx, log: log) }
}

if wants.contains("load") {
    log("load: floors under load, then the pulse under load…")
    let cpuLoad = CPULoad(ctx, seconds: 3 * options.seconds + 40)
    attempt("load") {
        let (timer, natsFloor, floorLoad) = try measureFloorsUnderLoad(ctx, bpm: options.bpm)
        var r = try runPulseScenario(
            ctx, name: "load", bpm: options.bpm, timerFloor: timer, natsFloor: natsFloor, withHTTPLoad: true)
        r.load = "\(cpuLoad.description); \(r.load ?? "no HTTP load")"
        r.notes.append("floors measured under the same load (\(floorLoad) against a second pulse at 4 bpm)")
        report.scenarios.append(r)
    }
    cpuLoad.stop()
}

nats?.stop()

report.elapsedSeconds = Double(cloop_monotonic_ns() - started) / 1e9
print(report.text(), terminator: "")
if let path = options.jsonPath {
    do { try report.json().write(to: URL(fileURLWithPath: path)) } catch { log("cannot write \(path): \(error)") }
}
if let path = options.htmlPath {
    do { try report.html().write(toFile: path, atomically: true, encoding: .utf8) } catch {
        log("cannot write \(path): \(error)")
    }
}
try? FileManager.default.removeItem(atPath: ctx.tempDir)
killAllChildren()
if !failedScenarios.isEmpty {
    log("error: \(failedScenarios.count) scenario(s) could not run: \(failedScenarios.joined(separator: ", "))")
    exit(1)
}
exit(0)
