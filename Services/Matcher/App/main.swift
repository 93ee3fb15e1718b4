import MatcherService

// matcher: looks match tokens up among the filed records, a batch per query.
await Matcher.runtime.main()
