import MatcherService
import VeilService

// matcher: looks match tokens up among the filed records, a batch per query.
await ServiceRuntime(service: .matcher) { context in try MatcherHandler.make(context) }.main()
