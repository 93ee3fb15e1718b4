import AnonymizerService
import VeilService

// anonymizer: A = HMAC(kT, P), sealed to the key-vault.
await ServiceRuntime(service: .anonymizer) { context in
    EnvelopeStage(codec: context.codec, handler: AnonymizerHandler(grants: context.grants))
}.main()
