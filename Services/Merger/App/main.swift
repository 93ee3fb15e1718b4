import MergerService
import VeilService

// merger: opens the matched record, merges it with the access info, publishes the insight
// sealed to each downstream provider and/or saves it.
await ServiceRuntime(service: .merger, migrations: MergerHandler.migrations) { context in
    EnvelopeStage(codec: context.codec, handler: MergerHandler(settings: try MergerHandler.Settings(context.configuration),
                                                               grants: context.grants, database: context.database,
                                                               logger: context.logger))
}.main()
