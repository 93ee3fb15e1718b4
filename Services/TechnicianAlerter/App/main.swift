import VeilService

// The technicianAlerter service. Its domain step plugs in as the handler; until then it joins its
// consumer group, serves /health and /metrics, verifies envelopes and dead-letters what it cannot handle.
await ServiceRuntime(service: .technicianAlerter) { context in EnvelopeStage(codec: context.codec, handler: UnsupportedEnvelopeHandler()) }.main()
