import VeilService

// The keyVault service. Its domain step plugs in as the handler; until then it joins its
// consumer group, serves /health and /metrics, and dead-letters what it cannot handle.
await ServiceRuntime(service: .keyVault) { _ in UnsupportedMessageHandler() }.main()
