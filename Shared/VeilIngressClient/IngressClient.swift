import Foundation
@_exported import VeilClient
@_exported import VeilContracts
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Talks to ingress over HTTPS for a device: enrolls it and sends signed inquiries.
public struct IngressClient: Sendable {
    public let baseURL: URL
    let session: URLSession

    public init(baseURL: URL, session: URLSession = .shared) {
        self.baseURL = baseURL
        self.session = session
    }

    /// The problem ingress answered with (`application/problem+json`), or a transport failure.
    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let status: Int
        /// The stable problem code, e.g. `bad_signature`, `replayed_nonce`.
        public let code: String
        public let detail: String
        public var description: String { "\(status) \(code): \(detail)" }
    }

    /// Sends a signed request and returns the status and body.
    public func send(_ request: SignedRequest, headers: [String: String] = [:]) async throws -> (status: Int, body: Data) {
        var urlRequest = URLRequest(url: baseURL.appendingPathComponent(String(request.path.dropFirst())))
        urlRequest.httpMethod = request.method
        urlRequest.httpBody = Data(request.body)
        urlRequest.setValue("application/json", forHTTPHeaderField: "Content-Type")
        urlRequest.setValue(request.signature, forHTTPHeaderField: DeviceRequestSignature.header)
        for (name, value) in headers { urlRequest.setValue(value, forHTTPHeaderField: name) }
        let (data, response) = try await session.boundedData(for: urlRequest)
        return (response.statusCode, data)
    }

    /// Enrolls the device (`201`); an already enrolled device with the same keys is fine.
    public func enroll(_ device: DeviceIdentity, enrollmentToken: String? = nil) async throws {
        let (status, body) = try await send(try device.enrollment(),
                                            headers: enrollmentToken.map { ["Veil-Enrollment-Token": $0] } ?? [:])
        guard status == 201 else { throw Self.failure(status, body) }
    }

    /// Enrolls the device bound to `accountId` with the one-time code the customer received.
    public func enroll(_ device: DeviceIdentity, accountId: String, code: String) async throws {
        let (status, body) = try await send(try device.enrollment(accountId: accountId, code: code))
        guard status == 201 else { throw Self.failure(status, body) }
    }

    /// The dispatcher's public encryption key, to seal service requests to.
    public func dispatcherKey() async throws -> PublishedEncryptionKey { try await publishedKey("dispatcher") }

    /// The key-vault's public encryption key, to seal a TID or a secure form's value to.
    public func vaultKey() async throws -> PublishedEncryptionKey { try await publishedKey("key-vault") }

    func publishedKey(_ service: String) async throws -> PublishedEncryptionKey {
        let (data, response) = try await session.boundedData(for: URLRequest(url: baseURL.appendingPathComponent("v1/keys/\(service)")))
        let status = response.statusCode
        guard status == 200 else { throw Self.failure(status, data) }
        return try JSONDecoder().decode(PublishedEncryptionKey.self, from: data)
    }

    /// Sends a service request sealed to the dispatcher; returns its id once accepted (`202`).
    public func submit(_ device: DeviceIdentity, _ request: ServiceRequestPayload,
                       dispatcher: PublishedEncryptionKey? = nil) async throws -> ServiceRequestReceipt {
        let key: PublishedEncryptionKey
        if let dispatcher { key = dispatcher } else { key = try await dispatcherKey() }
        let (status, body) = try await send(try device.serviceRequest(request, dispatcher: key))
        guard status == 202 else { throw Self.failure(status, body) }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        return try decoder.decode(ServiceRequestReceipt.self, from: body)
    }

    /// Reads `path` with a signed read (`Veil-Signature` + `Veil-Timestamp`) and decodes the JSON answer.
    public func read<T: Decodable>(_ path: String, as type: T.Type, by device: DeviceIdentity, baseURL: URL? = nil) async throws -> T {
        let signed = try device.signedRead(path)
        var request = URLRequest(url: (baseURL ?? self.baseURL).appendingPathComponent(String(path.dropFirst())))
        request.setValue(signed.signature, forHTTPHeaderField: DeviceRequestSignature.header)
        request.setValue(String(signed.timestamp), forHTTPHeaderField: SignedRead.timestampHeader)
        let (data, response) = try await session.boundedData(for: request)
        let status = response.statusCode
        guard status == 200 else { throw Self.failure(status, data) }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        return try decoder.decode(type, from: data)
    }

    /// Listens on a server-sent-events stream for `seconds` (signed read of `path`) and
    /// returns the deliveries that arrived once the server closes it. (URLSession on Linux
    /// hands over the body at the end; an app reads the events as they come.)
    public func events(_ path: String, seconds: Int, by device: DeviceIdentity) async throws -> [SealedDelivery] {
        let signed = try device.signedRead(path)
        var components = URLComponents(url: baseURL.appendingPathComponent(String(path.dropFirst())), resolvingAgainstBaseURL: false)!
        components.queryItems = [URLQueryItem(name: "seconds", value: String(seconds))]
        var request = URLRequest(url: components.url!)
        request.timeoutInterval = Double(seconds + 30)
        request.setValue(signed.signature, forHTTPHeaderField: DeviceRequestSignature.header)
        request.setValue(String(signed.timestamp), forHTTPHeaderField: SignedRead.timestampHeader)
        let (data, response) = try await session.boundedData(for: request)
        let status = response.statusCode
        guard status == 200 else { throw Self.failure(status, data) }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        return try String(decoding: data, as: UTF8.self).split(separator: "\n")
            .filter { $0.hasPrefix("data: ") }
            .map { try decoder.decode(SealedDelivery.self, from: Data($0.dropFirst(6).utf8)) }
    }

    /// The device's confirmations as they arrive, for `seconds` (the live inbox), opened.
    public func inboxStream(_ device: DeviceIdentity, seconds: Int) async throws -> [CustomerNotification] {
        try await events("/v1/devices/\(device.deviceId)/inbox/stream", seconds: seconds, by: device)
            .map { try device.open($0, as: CustomerNotification.self) }
    }

    /// The device's confirmations (sealed to it), opened.
    public func inbox(_ device: DeviceIdentity) async throws -> [CustomerNotification] {
        let items = try await read("/v1/devices/\(device.deviceId)/inbox", as: [SealedDelivery].self, by: device)
        return try items.map { try device.open($0, as: CustomerNotification.self) }
    }

    /// Sends an inquiry; returns its id and status once Veil's pipeline accepted it (`202`).
    public func inquire(_ device: DeviceIdentity, userId: String, channel: String = "app", appVersion: String = "1.0.0",
                        appData: [String: String] = [:]) async throws -> InquiryStatus {
        let (status, body) = try await send(try device.inquiry(userId: userId, channel: channel, appVersion: appVersion, appData: appData))
        guard status == 202 else { throw Self.failure(status, body) }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .millisecondsSince1970
        return try decoder.decode(InquiryStatus.self, from: body)
    }

    /// A till's household lookup: `200` with the HHID and the de-identified TID, or a `Failure`
    /// (`pos_household_not_found`, `pos_vault_timeout`, `replayed_nonce`, ...).
    public func posLookup(_ terminal: DeviceIdentity, tid: String, vault: PublishedEncryptionKey? = nil) async throws -> PosLookupResult {
        let key: PublishedEncryptionKey
        if let vault { key = vault } else { key = try await vaultKey() }
        return try await posLookup(try terminal.posLookup(tid: tid, vault: key))
    }

    /// Sends an already signed lookup (a test replays one with this).
    public func posLookup(_ signed: SignedRequest) async throws -> PosLookupResult {
        let (status, body) = try await send(signed)
        guard status == 200 else { throw Self.failure(status, body) }
        return try JSONDecoder().decode(PosLookupResult.self, from: body)
    }

    /// Publishes a till transaction (`202`).
    public func posTransaction(_ terminal: DeviceIdentity, lookup: PosLookupResult, upcs: [String]) async throws -> PosTransactionReceipt {
        let (status, body) = try await send(try terminal.posTransaction(lookup, upcs: upcs))
        guard status == 202 else { throw Self.failure(status, body) }
        return try JSONDecoder().decode(PosTransactionReceipt.self, from: body)
    }

    /// Answers an agent's secure-form request with `value`, sealed to the key-vault (`202`).
    public func answer(_ form: SecureFormRequest, value: String, by device: DeviceIdentity,
                       vault: PublishedEncryptionKey? = nil) async throws {
        let key: PublishedEncryptionKey
        if let vault { key = vault } else { key = try await vaultKey() }
        let (status, body) = try await send(try device.secureForm(form, value: value, vault: key))
        guard status == 202 else { throw Self.failure(status, body) }
    }

    /// Opens a channel link the customer received by SMS (the whole link or its token): the
    /// dispatcher binds this device to that request; the answer (`channel-opened` or
    /// `channel-refused`) arrives in the device's inbox.
    public func openChannel(_ device: DeviceIdentity, link: String, dispatcher: PublishedEncryptionKey? = nil) async throws -> ServiceRequestReceipt {
        try await submit(device, ServiceRequestPayload(category: "channel-link", priority: 3, description: "open the app channel",
                                                       channelLink: link), dispatcher: dispatcher)
    }

    static func failure(_ status: Int, _ body: Data) -> Failure {
        let object = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any]
        return Failure(status: status, code: object?["code"] as? String ?? "http_\(status)",
                       detail: object?["detail"] as? String ?? String(decoding: body.prefix(200), as: UTF8.self))
    }
}
