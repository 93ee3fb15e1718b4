import AnonymizerService

// anonymizer: A = HMAC(kT, P), sealed to the key-vault.
await Anonymizer.runtime.main()
