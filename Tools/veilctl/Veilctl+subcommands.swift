import ArgumentParser

extension Veilctl {
    static let available: [any ParsableCommand.Type] = [
        DatabaseCommand.self, KeysCommand.self, ConfigCommand.self, UpstreamCommand.self, DeviceCommand.self, ConsumeCommand.self, ContractsCommand.self,
        StatusCommand.self, DeadLetterCommand.self, TechnicianCommand.self, DispatchCommand.self, AgentCommand.self, PosCommand.self, ChannelCommand.self,
    ]
}
