import Foundation
@_exported import VeilClient
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A technician's app talking to the technician-alerter: fetch offers (sealed to this
/// device), answer them (sealed to the dispatcher, signed by this device).
public struct TechnicianClient: Sendable {
    public let baseURL: URL
    /// The technician id the dispatcher knows (also the `DeviceIdentity.deviceId`).
    public let device: DeviceIdentity
    let http: IngressClient

    public init(baseURL: URL, device: DeviceIdentity, session: URLSession = .shared) {
        self.baseURL = baseURL
        self.device = device
        http = IngressClient(baseURL: baseURL, session: session)
    }

    /// Undelivered offers, opened.
    public func alerts() async throws -> [AlertPayload] {
        let items = try await http.read("/v1/technicians/\(device.deviceId)/alerts", as: [SealedDelivery].self, by: device)
        return try items.map { try device.open($0, as: AlertPayload.self) }
    }

    /// Listens on the live stream (`…/alerts/stream`, server-sent events) for `seconds`
    /// and returns the offers that arrived, opened, once the server closes it. (URLSession
    /// on Linux hands over the body at the end; an app reads the events as they come.)
    public func stream(seconds: Int) async throws -> [AlertPayload] {
        try await http.events("/v1/technicians/\(device.deviceId)/alerts/stream", seconds: seconds, by: device)
            .map { try device.open($0, as: AlertPayload.self) }
    }

    /// Answers an offer (`accept`, `decline` with a reason, `en-route`, `completed`).
    public func answer(_ alert: AlertPayload, _ action: TechnicianAction, note: String? = nil,
                       dispatcher: PublishedEncryptionKey) async throws {
        let request = try device.answer(TechnicianAnswer(reservationId: alert.reservationId, technicianId: device.deviceId,
                                                         action: action, note: note), dispatcher: dispatcher)
        let (status, body) = try await http.send(request)
        guard status == 202 else { throw IngressClient.failure(status, body) }
    }
}
