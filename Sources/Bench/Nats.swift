// Bench/Nats.swift — the independent NATS subscriber and a plain publisher,
// both through the NATS C client in its default threaded mode.
//
// The subscriber's callback runs on the client's own delivery thread: it reads
// CLOCK_REALTIME first, then decodes the payload (a frame through the shared
// `BeatFrameDecoder`, or a floor message's send stamp) and appends the pair to
// storage of fixed capacity (frames beyond it are counted, not kept; payloads
// that do not decode are counted as `unparsed`).

import CLoop
import CNats
import Foundation
import PulseCore

#if canImport(Glibc)
    import Glibc
#endif

struct Reception {
    var value: Int64  // beat index, or the sender's CLOCK_REALTIME stamp
    var receivedNs: Int64
    var term: Int64 = 0  // `.clusterFrame` only: the frame's Raft term
    var from: UInt32 = 0  // `.clusterFrame` only: the hlc's node suffix, up to 4 bytes packed big-endian
    var degraded = false  // `.clusterFrame` only: the frame carries "degraded":true

    /// The publisher's node suffix as text (the last `:`-field of `hlc`).
    var fromName: String {
        var bytes: [UInt8] = []
        for shift in stride(from: 24, through: 0, by: -8) {
            let b = UInt8(truncatingIfNeeded: from >> UInt32(shift))
            if b != 0 { bytes.append(b) }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

final class Receiver {
    enum Payload {
        case beatFrame  // JSON with "beat_index":N
        case clusterFrame  // a beat frame, also its term, hlc node suffix and degraded flag
        case stamp  // ASCII decimal nanoseconds
    }

    private var connection: OpaquePointer?
    private var subscription: OpaquePointer?
    private let payload: Payload
    private let lock = NSLock()
    private let storage: UnsafeMutablePointer<Reception>
    private let capacity: Int
    private var count = 0
    private(set) var dropped = 0
    private(set) var unparsed = 0

    init(url: String, subject: String, payload: Payload, capacity: Int = 1 << 20) throws {
        self.payload = payload
        self.capacity = capacity
        storage = .allocate(capacity: capacity)
        var opts: OpaquePointer?
        natsOptions_Create(&opts)
        defer { natsOptions_Destroy(opts) }
        natsOptions_SetURL(opts, url)
        natsOptions_SetName(opts, "pulse-bench-subscriber")
        var status = natsConnection_Connect(&connection, opts)
        guard status == NATS_OK else { throw BenchError("subscriber connect to \(url): \(natsStatusText(status))") }
        status = natsConnection_Subscribe(
            &subscription, connection, subject,
            { _, _, msg, closure in
                let now = cloop_realtime_ns()
                let receiver = Unmanaged<Receiver>.fromOpaque(closure!).takeUnretainedValue()
                let data = natsMsg_GetData(msg)
                let length = Int(natsMsg_GetDataLength(msg))
                receiver.received(data, length, at: now)
                natsMsg_Destroy(msg)
            }, Unmanaged.passUnretained(self).toOpaque())
        guard status == NATS_OK else { throw BenchError("subscribe \(subject): \(natsStatusText(status))") }
        natsSubscription_SetPendingLimits(subscription, 1 << 20, 1 << 30)
        natsConnection_Flush(connection)
    }

    private func received(_ data: UnsafePointer<CChar>?, _ length: Int, at now: Int64) {
        guard let data else { return }
        let bytes = UnsafeRawBufferPointer(start: data, count: length).bindMemory(to: UInt8.self)
        var value: Int64?
        var extra = (term: Int64(0), from: UInt32(0), degraded: false)
        switch payload {
        case .stamp: value = integer(at: 0, in: bytes)
        case .beatFrame, .clusterFrame:
            if case .success(let frame) = BeatFrameDecoder.result(UnsafeRawBufferPointer(bytes)) {
                value = frame.beatIndex
                if payload == .clusterFrame {
                    extra.term = Int64(clamping: frame.term)
                    extra.from = packed(frame.hlcSuffix)
                    extra.degraded = frame.degraded
                }
            }
        }
        lock.lock()
        defer { lock.unlock() }
        guard let value else {
            unparsed += 1
            return
        }
        guard count < capacity else {
            dropped += 1
            return
        }
        storage[count] = Reception(
            value: value, receivedNs: now, term: extra.term, from: extra.from, degraded: extra.degraded)
        count += 1
    }

    /// Everything received so far, in arrival order.
    func snapshot() -> [Reception] {
        lock.lock()
        defer { lock.unlock() }
        return Array(UnsafeBufferPointer(start: storage, count: count))
    }

    var received: Int {
        lock.lock()
        defer { lock.unlock() }
        return count
    }

    func close() {
        if let subscription { natsSubscription_Unsubscribe(subscription) }
        natsSubscription_Destroy(subscription)
        subscription = nil
        natsConnection_Destroy(connection)
        connection = nil
    }

    deinit {
        close()
        storage.deallocate()
    }
}

/// A node suffix's first 4 bytes packed big-endian (`Reception.from`).
func packed(_ suffix: String) -> UInt32 {
    suffix.utf8.prefix(4).reduce(0) { $0 << 8 | UInt32($1) }
}

private func integer(at start: Int, in bytes: UnsafeBufferPointer<UInt8>) -> Int64? {
    var i = start
    var value: Int64 = 0
    var digits = 0
    while i < bytes.count, bytes[i] >= 48, bytes[i] <= 57, digits < 19 {
        value = value * 10 + Int64(bytes[i] - 48)
        i += 1
        digits += 1
    }
    return digits > 0 ? value : nil
}

func natsStatusText(_ status: natsStatus) -> String {
    String(cString: natsStatus_GetText(status))
}

/// A publishing connection in the client's default threaded mode; with
/// `sendAsap` each publish is written to the socket inside the call.
final class Publisher {
    private var connection: OpaquePointer?

    init(url: String, sendAsap: Bool) throws {
        var opts: OpaquePointer?
        natsOptions_Create(&opts)
        defer { natsOptions_Destroy(opts) }
        natsOptions_SetURL(opts, url)
        natsOptions_SetName(opts, "pulse-bench-publisher")
        if sendAsap { natsOptions_SetSendAsap(opts, true) }
        let status = natsConnection_Connect(&connection, opts)
        guard status == NATS_OK else { throw BenchError("publisher connect to \(url): \(natsStatusText(status))") }
    }

    @discardableResult
    func publish(_ subject: String, _ bytes: UnsafeRawBufferPointer) -> Bool {
        natsConnection_Publish(connection, subject, bytes.baseAddress, Int32(bytes.count)) == NATS_OK
    }

    func flush() { natsConnection_FlushTimeout(connection, 2000) }

    deinit { natsConnection_Destroy(connection) }
}
