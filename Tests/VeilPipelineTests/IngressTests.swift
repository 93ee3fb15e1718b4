import Crypto
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing
import VeilClient
import VeilIngressClient
import VeilContracts
import VeilService

extension PipelineSuites {
    @Suite("Ingress refuses bad input with a problem code and publishes nothing", .serialized, .timeLimit(.minutes(3)))
    struct IngressTests {
        struct Answer {
            let status: Int
            let code: String?
            let contentType: String?
        }

        func post(_ world: PipelineWorld, _ path: String, body: [UInt8], signature: String?,
                  contentType: String = "application/json") async throws -> Answer {
            var request = URLRequest(url: world.ingressURL.appendingPathComponent(String(path.dropFirst())))
            request.httpMethod = "POST"
            request.httpBody = Data(body)
            request.setValue(contentType, forHTTPHeaderField: "Content-Type")
            if let signature { request.setValue(signature, forHTTPHeaderField: "Veil-Signature") }
            let (data, http) = try await URLSession.shared.boundedData(for: request)
            let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
            return Answer(status: http.statusCode, code: object?["code"] as? String,
                          contentType: http.value(forHTTPHeaderField: "Content-Type"))
        }

        func send(_ world: PipelineWorld, _ request: SignedRequest) async throws -> Answer {
            try await post(world, request.path, body: request.body, signature: request.signature)
        }

        @Test("every error case answers its problem code; only the one valid inquiry is published and stored")
        func errorCases() async throws {
            let world = try await PipelineWorld.start([.ingress])
            defer { Task { await world.stop() } }
            let device = DeviceIdentity(deviceId: "device-errors")
            try await world.client.enroll(device)
            let stranger = DeviceIdentity(deviceId: "device-never-enrolled")
            let impostor = DeviceIdentity(deviceId: "device-errors")  // same id, other key

            func inquiry(_ body: [String: Any]) throws -> [UInt8] {
                Array(try JSONSerialization.data(withJSONObject: body, options: [.sortedKeys]))
            }
            func signed(_ body: [UInt8], by identity: DeviceIdentity = device, path: String = "/v1/inquiries") throws -> String {
                Data(try identity.signingKey.signature(for: DeviceRequestSignature.signedBytes(method: "POST", path: path, body: body)))
                    .base64EncodedString()
            }
            let now = DeviceRequestSignature.milliseconds(Date())
            let complete: [String: Any] = ["deviceId": device.deviceId, "userId": "+4915112345678", "channel": "app",
                                           "appVersion": "3.1.0", "timestamp": now, "nonce": DeviceRequestSignature.newNonce()]
            var missing = complete
            missing["userId"] = nil
            var stale = complete
            stale["timestamp"] = now - 3_600_000
            var badNonce = complete
            badNonce["nonce"] = "short"
            let valid = try device.inquiry(userId: "+4915112345678", channel: "app", appVersion: "3.1.0")
            let unknown = try stranger.inquiry(userId: "+4915112345678", channel: "app", appVersion: "3.1.0")
            let big = Array(repeating: UInt8(ascii: "a"), count: 70_000)

            let cases: [(String, Answer, Int, String)] = [
                ("malformed JSON", try await post(world, "/v1/inquiries", body: Array("{not json".utf8), signature: "x"), 400, "malformed_json"),
                ("missing field", try await post(world, "/v1/inquiries", body: try inquiry(missing), signature: try signed(try inquiry(missing))),
                 400, "missing_field"),
                ("invalid nonce", try await post(world, "/v1/inquiries", body: try inquiry(badNonce), signature: try signed(try inquiry(badNonce))),
                 400, "invalid_field"),
                ("no signature", try await post(world, "/v1/inquiries", body: valid.body, signature: nil), 401, "bad_signature"),
                ("signature by another key", try await post(world, "/v1/inquiries", body: valid.body, signature: try signed(valid.body, by: impostor)),
                 401, "bad_signature"),
                ("signature for another endpoint", try await post(world, "/v1/inquiries", body: valid.body,
                                                                   signature: try signed(valid.body, path: "/v1/devices")), 401, "bad_signature"),
                ("stale timestamp", try await post(world, "/v1/inquiries", body: try inquiry(stale), signature: try signed(try inquiry(stale))),
                 401, "stale_request"),
                ("unknown device", try await send(world, unknown), 401, "unknown_device"),
                ("oversize body", try await post(world, "/v1/inquiries", body: big, signature: "x"), 413, "body_too_large"),
                ("not JSON content", try await post(world, "/v1/inquiries", body: valid.body, signature: valid.signature, contentType: "text/plain"),
                 415, "unsupported_media_type"),
                ("valid", try await send(world, valid), 202, ""),
                ("replayed nonce", try await send(world, valid), 409, "replayed_nonce"),
            ]
            for (name, answer, status, code) in cases {
                #expect(answer.status == status, "\(name): status")
                if !code.isEmpty {
                    #expect(answer.code == code, "\(name): problem code")
                    #expect(answer.contentType == "application/problem+json", "\(name): content type")
                }
            }

            // Only the valid inquiry was published and stored.
            let published = try await world.readAll([Topic.inquiriesReceived.name], idle: .seconds(2), firstWait: .seconds(8))
            #expect(published.count == 1)
            #expect(try await world.adminCount("SELECT count(*) FROM ingress.inquiries") == 1)
            #expect(try await world.adminCount("SELECT count(*) FROM ingress.request_nonces") == 1)
            await world.stop()
        }

        @Test("enrollment proves possession of the key, and a device id cannot be re-bound to another key")
        func enrollment() async throws {
            let world = try await PipelineWorld.start([.ingress], settings: ["VEIL_ENROLLMENT_TOKEN": "letmein"])
            defer { Task { await world.stop() } }
            let device = DeviceIdentity(deviceId: "device-enroll")
            await #expect(throws: IngressClient.Failure.self) { try await world.client.enroll(device) }
            do {
                try await world.client.enroll(device, enrollmentToken: "wrong")
                Issue.record("a wrong enrollment token was accepted")
            } catch let failure as IngressClient.Failure {
                #expect(failure.code == "enrollment_refused")
            }
            try await world.client.enroll(device, enrollmentToken: "letmein")
            try await world.client.enroll(device, enrollmentToken: "letmein")  // same keys again: fine
            do {
                try await world.client.enroll(DeviceIdentity(deviceId: "device-enroll"), enrollmentToken: "letmein")
                Issue.record("a device id was re-bound to another key")
            } catch let failure as IngressClient.Failure {
                #expect(failure.code == "already_enrolled")
            }
            // The stored device row holds a keyed pseudonym, never the id.
            let refs = try await world.adminStrings("SELECT encode(device_ref, 'escape') FROM ingress.devices")
            #expect(refs.count == 1 && !refs[0].contains("device-enroll"))
            await world.stop()
        }
    }
}
