// Bench/Signed.swift — the `signed` scenario (issue 20, `-sign-key`): the
// pulse as in `idle`, but signing every frame with Ed25519, so its jitter,
// its decision → write stage and its allocated bytes per beat sit beside the
// unsigned run of the same Bench run. Also the cost of the signature itself:
// libsodium's `crypto_sign_detached` (the node's call) over a frame-sized
// message, timed in this process on the pulse's core.

import CLoop
import CSodium
import Foundation

/// The `signed` scenario; `idle` (same run), when measured, gives the unsigned stage to compare with.
func runSignedScenario(
    _ ctx: BenchContext, bpm: Int, timerFloor: Floor, natsFloor: Floor, periodFloor: Floor?, cpuFloor: CpuFloor?,
    idle: ScenarioResult?
) throws -> ScenarioResult {
    let (keyPath, seed) = try writeBenchSignKey(ctx)
    defer { try? FileManager.default.removeItem(atPath: keyPath) }

    var result = try runPulseScenario(
        ctx, name: "signed", bpm: bpm, timerFloor: timerFloor, natsFloor: natsFloor, withHTTPLoad: false,
        periodFloor: periodFloor, cpuFloor: cpuFloor, extraArgs: ["-sign-key", keyPath])
    result.mode = "-sign-key (Ed25519, every frame)"
    let sign = measureSignature(seed: seed, cpu: ctx.cpu)
    result.notes.append(
        "Ed25519 signature of a 340-byte frame (crypto_sign_detached, in Bench on cpu \(ctx.cpu)): "
            + String(format: "p50 %.1f µs, p99 %.1f µs over %d", sign.p50, sign.p99, sign.count))
    let stage = "decision → write returned"
    if let idle, let unsigned = idle.stages.first(where: { $0.0 == stage })?.1.summary,
        let signed = result.stages.first(where: { $0.0 == stage })?.1.summary, unsigned.count > 0, signed.count > 0
    {
        result.notes.append(
            "\(stage) "
                + String(
                    format: "p50 %.1f µs signed vs %.1f µs unsigned (idle, same run): %+.1f µs per beat",
                    signed.p50, unsigned.p50, signed.p50 - unsigned.p50))
    } else {
        result.notes.append("no idle run to compare with (run --scenarios idle,signed)")
    }
    return result
}

/// A fresh Ed25519 key for `-sign-key` in the run's temp dir (mode 0600): its path and seed.
func writeBenchSignKey(_ ctx: BenchContext) throws -> (path: String, seed: [UInt8]) {
    guard sodium_init() >= 0 else { throw BenchError("signed: libsodium could not initialise") }
    var seed = [UInt8](repeating: 0, count: 32)
    randombytes_buf(&seed, seed.count)
    // A PEM Ed25519 private key (RFC 8410), as `openssl genpkey -algorithm ed25519` writes it.
    let der: [UInt8] =
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20] + seed
    let keyPath = ctx.tempDir + "/sign-\(UInt64.random(in: 1...UInt64.max)).key"
    let pem = "-----BEGIN PRIVATE KEY-----\n\(Data(der).base64EncodedString())\n-----END PRIVATE KEY-----\n"
    guard
        FileManager.default.createFile(
            atPath: keyPath, contents: Data(pem.utf8), attributes: [.posixPermissions: 0o600])
    else { throw BenchError("signed: cannot write \(keyPath)") }
    return (keyPath, seed)
}

/// Times `crypto_sign_detached` over a frame-sized message `count` times, pinned to `cpu`.
private func measureSignature(seed: [UInt8], cpu: Int, count: Int = 20_000) -> Percentiles {
    var publicKey = [UInt8](repeating: 0, count: 32)
    var secretKey = [UInt8](repeating: 0, count: 64)
    _ = crypto_sign_seed_keypair(&publicKey, &secretKey, seed)
    var message = [UInt8](repeating: UInt8(ascii: "x"), count: 340)
    var signature = [UInt8](repeating: 0, count: 64)
    var latencies = Latencies()
    let measure = {
        for i in 0..<count {
            message[i % message.count] = UInt8(truncatingIfNeeded: i)
            let t0 = cloop_monotonic_ns()
            _ = crypto_sign_detached(&signature, nil, message, UInt64(message.count), secretKey)
            latencies.record(ns: cloop_monotonic_ns() - t0)
            sink(Int64(signature[0]))
        }
    }
    // On the pulse's core, like the node's loop thread.
    let done = DispatchSemaphore(value: 0)
    Thread {
        _ = pinCurrentThread(to: cpu)
        measure()
        done.signal()
    }.start()
    done.wait()
    return latencies.summary
}
