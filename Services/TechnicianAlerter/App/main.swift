import TechnicianAlerterService

await TechnicianAlerter.runtime.main()
