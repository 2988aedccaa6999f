// A plain second NATS client for tests: the foreign publisher on a subject
// the pulse reads (NatsLoopSubscriptionTests, NatsDeferredReadTests).
import CNats
import Foundation

final class NatsTestPublisher {
    private var connection: OpaquePointer?

    init(url: String) throws {
        guard natsConnection_ConnectTo(&connection, url) == NATS_OK else {
            throw NSError(domain: "publisher connect", code: 1)
        }
    }

    func publish(_ subject: String, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { natsConnection_Publish(connection, subject, $0.baseAddress, Int32($0.count)) }
    }

    /// Publishes `text` and waits until the server has it.
    func publish(_ subject: String, _ text: String) {
        publish(subject, Array(text.utf8))
        flush()
    }

    func flush() { natsConnection_FlushTimeout(connection, 5000) }

    deinit { natsConnection_Destroy(connection) }
}
