// Bench/PulseBinary.swift — which `pulse` Bench measures, and that it is a
// release build.
//
// PULSE_BINARY names one (e.g. a build of another commit). Otherwise Bench
// finds its package (Package.swift above its own executable, as `swift run
// Bench` places it) and runs `swift build -c release --product pulse` there,
// which builds it on a fresh clone and is a quick no-op when it is up to
// date. The binary's build mode comes from the binary itself (`pulse
// --version` says release or debug); a debug build is refused unless
// --allow-debug, since its timings would judge nothing.

import Foundation

#if canImport(Glibc)
    import Glibc
#endif

struct PulseBinary {
    var path: String
    /// `pulse --version`'s line.
    var version: String
    /// "release", "debug", or "unknown" (a build older than this field).
    var mode: String
    /// How Bench came by it (PULSE_BINARY, built, found).
    var origin: String
}

enum PulseBinaryError: Error, CustomStringConvertible {
    case message(String)
    var description: String {
        switch self {
        case .message(let text): return text
        }
    }
}

/// The directory above `start` that holds Package.swift, or nil.
func packageRoot(from start: String) -> String? {
    var dir = (start as NSString).standardizingPath
    while dir != "/" && !dir.isEmpty {
        if FileManager.default.fileExists(atPath: dir + "/Package.swift") { return dir }
        dir = (dir as NSString).deletingLastPathComponent
    }
    return nil
}

/// The build mode a `pulse --version` line states (its last parenthesised
/// field: `pulse 0.1.0 (commit abc, Swift 6.3, release)`).
func buildMode(versionLine: String) -> String {
    for mode in ["release", "debug"] where versionLine.hasSuffix(", \(mode))") { return mode }
    return "unknown"
}

/// Resolves (and if need be builds) the pulse to measure. Logs what it does
/// on stderr; throws a one-line reason when there is none to measure.
func resolvePulseBinary(environment: [String: String], allowDebug: Bool, log: (String) -> Void) throws
    -> PulseBinary
{
    var path: String
    var origin: String
    if let given = environment["PULSE_BINARY"], !given.isEmpty {
        path = given
        origin = "PULSE_BINARY"
    } else {
        guard
            let root = packageRoot(from: executableDirectory())
                ?? packageRoot(from: FileManager.default.currentDirectoryPath)
        else {
            throw PulseBinaryError.message(
                "cannot find the package (no Package.swift above \(executableDirectory())); set PULSE_BINARY")
        }
        guard let swift = findTool("swift") else {
            throw PulseBinaryError.message("swift is not on PATH to build the release pulse; set PULSE_BINARY")
        }
        log("building the release pulse (swift build -c release --product pulse in \(root); minutes on a fresh clone)…")
        let build = Process()
        build.executableURL = URL(fileURLWithPath: swift)
        build.arguments = ["build", "-c", "release", "--product", "pulse", "--package-path", root]
        build.standardOutput = FileHandle.standardError
        build.standardError = FileHandle.standardError
        try build.run()
        build.waitUntilExit()
        guard build.terminationStatus == 0 else {
            throw PulseBinaryError.message(
                "swift build -c release --product pulse failed (status \(build.terminationStatus))")
        }
        path = try releaseBinPath(swift: swift, root: root) + "/pulse"
        origin = "built by Bench (swift build -c release)"
    }
    guard access(path, X_OK) == 0 else { throw PulseBinaryError.message("no executable pulse at \(path)") }
    let version = try versionLine(of: path)
    let binary = PulseBinary(
        path: (path as NSString).resolvingSymlinksInPath, version: version, mode: buildMode(versionLine: version),
        origin: origin)
    if binary.mode != "release" && !allowDebug {
        throw PulseBinaryError.message(
            "\(binary.path) is a \(binary.mode) build (\(version)): its timings judge nothing; "
                + "build it with -c release, or pass --allow-debug to measure it anyway")
    }
    return binary
}

/// Where that build put its products (`swift build --show-bin-path`), not
/// an assumed `.build/release`.
private func releaseBinPath(swift: String, root: String) throws -> String {
    let (status, dir) = try output(of: swift, ["build", "-c", "release", "--package-path", root, "--show-bin-path"])
    guard status == 0, dir.hasPrefix("/") else {
        throw PulseBinaryError.message("swift build --show-bin-path failed (status \(status))")
    }
    return dir
}

private func versionLine(of path: String) throws -> String {
    let (status, line) = try output(of: path, ["--version"])
    guard status == 0, line.hasPrefix("pulse ") else {
        throw PulseBinaryError.message("\(path) --version did not answer like pulse (status \(status))")
    }
    return line
}

/// Runs `executable` and returns its exit status and its standard output, trimmed.
private func output(of executable: String, _ arguments: [String]) throws -> (status: Int32, text: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let out = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.nullDevice
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (
        process.terminationStatus, String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    )
}
