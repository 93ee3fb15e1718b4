import IngressService
import VeilService

// ingress: the device API (POST /v1/inquiries, /v1/devices) in front of Veil's pipeline.
await ServiceRuntime(service: .ingress, migrations: Ingress.migrations) { context in
    ServiceParts(handler: EnvelopeStage(codec: context.codec, handler: UnsupportedEnvelopeHandler()),
                 services: [try Ingress.api(context)])
}.main()
