import MergerService

// merger: opens the matched record, merges it with the access info, publishes the insight
// sealed to each downstream provider and/or saves it.
await Merger.runtime.main()
