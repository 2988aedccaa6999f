// Bench/Args.swift — the command line: a small, strict hand-written parser.
//
// `Bench [--seconds N] [--bpm N] [--scenarios LIST] [--nats URL] [--cpu N]
//        [--json FILE] [--html FILE] [--allow-debug] [--soak SECONDS]`
// Every flag takes one or two dashes and `--flag value` or `--flag=value`.
// An unknown flag or a bad value is one line on stderr and exit status 2.

#if canImport(Glibc)
    import Glibc
#endif

/// Names accepted by `--scenarios`; the default is all of them but `scale`
/// and `drift` (minutes each: asked for by name).
let knownScenarios = [
    "idle", "shared", "signed", "load", "per001", "election", "election-tls", "election-kv", "fanout", "flood",
    "flood-signed", "flood-control",
    "baseline", "drift",
    "scale",
]
let defaultScenarios = knownScenarios.filter { $0 != "scale" && $0 != "drift" }

struct BenchOptions {
    var seconds = 10
    var bpm = 600
    var scenarios = defaultScenarios
    var natsURL: String? = nil
    var cpu: Int? = nil
    var jsonPath: String? = nil
    var htmlPath: String? = nil
    /// Measure a debug build of pulse too (refused otherwise).
    var allowDebug = false
    /// `--soak SECONDS`: only the soak (Soak.swift), this long.
    var soakSeconds: Int? = nil
}

let usageText = """
    usage: Bench [--seconds N] [--bpm N] [--scenarios LIST] [--nats URL] [--cpu N] [--json FILE] [--html FILE]
                 [--soak SECONDS]
      --seconds N       measured seconds per scenario and per floor (1...3600, default 10);
                        election, election-tls (Raft over mutual TLS), election-kv (-election nats-kv,
                        a JetStream KV lease): N leader kills (3...20)
      --bpm N           tempo of the idle, load, election and baseline runs (1...6000, default 600); per001 is always 120
      --scenarios LIST  comma-separated subset of \(knownScenarios.joined(separator: ",")) (default: all but drift,scale)
      --nats URL        use this nats-server (127.0.0.1 or localhost only) instead of starting one
      --cpu N           core for the pulse, the floors and the baseline (default: the last core)
      --json FILE       write the report as JSON
      --html FILE       write a self-contained HTML page with CDF plots
      --allow-debug     measure a debug build of pulse (refused otherwise: its timings judge nothing)
      --soak SECONDS    only a soak of this length (60...86400): RSS, descriptors and jitter per 10-minute window
    The pulse measured: PULSE_BINARY, else the package's release build (built first when needed).
    Exit status: 0 when every scenario ran, 1 when one could not, 2 for bad arguments.
    """

/// Exits 2 with one line on stderr.
func usageError(_ message: String) -> Never {
    fputs("Bench: error: \(message) (see --help)\n", stderr)
    exit(2)
}

func parseArguments(_ argv: [String]) -> BenchOptions {
    var options = BenchOptions()
    var i = 0
    func int(_ text: String, _ flag: String, _ range: ClosedRange<Int>) -> Int {
        guard let v = Int(text), range.contains(v) else {
            usageError("--\(flag) \(text) is not an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }
    while i < argv.count {
        let arg = argv[i]
        i += 1
        if arg == "-h" || arg == "--help" || arg == "-help" {
            print(usageText)
            exit(0)
        }
        guard arg.hasPrefix("-") else { usageError("unexpected argument '\(arg)'") }
        if ["-allow-debug", "--allow-debug"].contains(arg) {
            options.allowDebug = true
            continue
        }
        var name = String(arg.drop(while: { $0 == "-" }))
        var value: String? = nil
        if let eq = name.firstIndex(of: "=") {
            value = String(name[name.index(after: eq)...])
            name = String(name[..<eq])
        }
        let flags = ["seconds", "bpm", "scenarios", "nats", "cpu", "json", "html", "soak"]
        guard flags.contains(name) else { usageError("unknown flag '\(arg)'") }
        if value == nil {
            guard i < argv.count else { usageError("--\(name) needs a value") }
            value = argv[i]
            i += 1
        }
        let v = value!
        switch name {
        case "seconds": options.seconds = int(v, name, 1...3600)
        case "bpm": options.bpm = int(v, name, 1...6000)
        case "cpu": options.cpu = int(v, name, 0...4095)
        case "soak": options.soakSeconds = int(v, name, 60...86400)
        case "json": options.jsonPath = v
        case "html": options.htmlPath = v
        case "nats":
            guard isLoopbackNatsURL(v) else {
                usageError(
                    "--nats \(v): only nats://127.0.0.1:PORT or nats://localhost:PORT (all bench traffic stays on loopback)"
                )
            }
            options.natsURL = v.replacingLocalhost()
        case "scenarios":
            let list = v.split(separator: ",").map { String($0) }
            guard !list.isEmpty else { usageError("--scenarios is empty") }
            for s in list where !knownScenarios.contains(s) {
                usageError("unknown scenario '\(s)' (known: \(knownScenarios.joined(separator: ",")))")
            }
            options.scenarios = knownScenarios.filter { list.contains($0) }
        default: usageError("unknown flag '\(arg)'")
        }
    }
    return options
}

func isLoopbackNatsURL(_ url: String) -> Bool {
    for prefix in ["nats://127.0.0.1:", "nats://localhost:"] where url.hasPrefix(prefix) {
        if let port = Int(url.dropFirst(prefix.count)), (1...65535).contains(port) { return true }
    }
    return false
}

extension String {
    fileprivate func replacingLocalhost() -> String {
        hasPrefix("nats://localhost:") ? "nats://127.0.0.1:" + dropFirst("nats://localhost:".count) : self
    }
}
