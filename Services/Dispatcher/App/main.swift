import DispatcherService

await Dispatcher.runtime.main()
