// swift-tools-version:6.1
import PackageDescription

/// Veil: privacy-preserving customer inquiries. Seven services that talk only
/// through Kafka topics carrying signed, encrypted envelopes and persist to
/// PostgreSQL. See README.md and docs/ARCHITECTURE.md.
///
/// Each service lives in `Services/<Folder>/`: its domain code is a library
/// (`<Folder>Service`, importable by tests and tools) and `App/main.swift` is the
/// executable that wires it into the runtime.
let services: [(target: String, folder: String, library: Bool)] = [
    ("ingress", "Ingress", true),
    ("anonymizer", "Anonymizer", true),
    ("key-vault", "KeyVault", true),
    ("matcher", "Matcher", true),
    ("merger", "Merger", true),
    ("dispatcher", "Dispatcher", true),
    ("technician-alerter", "TechnicianAlerter", true),
]
let serviceLibraries = services.filter(\.library).map { "\($0.folder)Service" }

let log = Target.Dependency.product(name: "Logging", package: "swift-log")
let lifecycle = Target.Dependency.product(name: "ServiceLifecycle", package: "swift-service-lifecycle")
let argumentParser = Target.Dependency.product(name: "ArgumentParser", package: "swift-argument-parser")

let package = Package(
    name: "veil",
    platforms: [.macOS(.v15)],
    products: services.map { .executable(name: $0.target, targets: [$0.target]) } + [
        .executable(name: "veilctl", targets: ["veilctl"]),
        .executable(name: "veil-dev-broker", targets: ["veil-dev-broker"]),
        .executable(name: "veil-bench", targets: ["veil-bench"]),
        .library(name: "VeilKafka", targets: ["VeilKafka"]),
        .library(name: "VeilStore", targets: ["VeilStore"]),
        .library(name: "VeilService", targets: ["VeilService"]),
        .library(name: "VeilEnvelope", targets: ["VeilEnvelope"]),
        .library(name: "VeilClient", targets: ["VeilClient", "VeilIngressClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/x-sheep/swift-property-based.git", from: "2.0.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/hummingbird-project/swift-mustache.git", from: "2.1.1"),
    ],
    targets: [
        // MARK: Shared libraries
        .systemLibrary(name: "CRdKafka", path: "Shared/CRdKafka", pkgConfig: "rdkafka",
                       providers: [.apt(["librdkafka-dev"])]),
        .target(name: "VeilCore", dependencies: [.product(name: "Crypto", package: "swift-crypto")],
                path: "Shared/VeilCore"),
        .target(name: "VeilEnvelope", dependencies: ["VeilCore", .product(name: "Crypto", package: "swift-crypto")],
                path: "Shared/VeilEnvelope"),
        .target(name: "VeilKafka", dependencies: ["CRdKafka", "VeilCore", log, lifecycle], path: "Shared/VeilKafka"),
        .target(name: "VeilStore", dependencies: [
            "VeilCore", "VeilKafka", log, lifecycle,
            .product(name: "PostgresNIO", package: "postgres-nio"),
        ], path: "Shared/VeilStore"),
        .target(name: "VeilContracts", dependencies: [], path: "Shared/VeilContracts"),
        // What devices, terminals and downstream providers import: no server dependency.
        .target(name: "VeilClient", dependencies: ["VeilCore", "VeilEnvelope", "VeilContracts",
                                                   .product(name: "Crypto", package: "swift-crypto")],
                path: "Shared/VeilClient"),
        // The device's HTTP client for ingress (URLSession; on Linux it links libcurl, so services do not use it).
        .target(name: "VeilIngressClient", dependencies: ["VeilClient", "VeilContracts"], path: "Shared/VeilIngressClient"),
        .target(name: "VeilService", dependencies: [
            "VeilCore", "VeilKafka", "VeilStore", "VeilContracts", "VeilEnvelope", log, lifecycle,
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "Hummingbird", package: "hummingbird"),
        ], path: "Shared/VeilService"),
    ] + services.filter(\.library).map {
        .target(name: "\($0.folder)Service", dependencies: [
            "VeilService", "VeilClient", log, lifecycle,
            .product(name: "Hummingbird", package: "hummingbird"), .product(name: "PostgresNIO", package: "postgres-nio"),
        ] + ($0.folder == "Dispatcher" ? [  // the agent console: templates and password hashing
            .product(name: "Mustache", package: "swift-mustache"), .product(name: "_CryptoExtras", package: "swift-crypto"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),  // the SMS gateway adapter
        ] : []), path: "Services/\($0.folder)",
                exclude: ["App"])
    } + services.map {
        .executableTarget(name: $0.target, dependencies: ["VeilService"] + ($0.library ? [.init(stringLiteral: "\($0.folder)Service")] : []),
                          path: "Services/\($0.folder)/App")
    } + [
        // MARK: Tools
        .executableTarget(name: "veil-dev-broker", dependencies: ["VeilKafka", "VeilContracts", argumentParser],
                          path: "Tools/veil-dev-broker"),
        .executableTarget(name: "veilctl", dependencies: ["VeilService", "VeilEnvelope", "VeilClient", "VeilIngressClient", "KeyVaultService", "DispatcherService", argumentParser],
                          path: "Tools/veilctl"),

        // MARK: Benchmarks
        .target(name: "CKafkaBaseline", dependencies: ["CRdKafka"], path: "Benchmarks/CKafkaBaseline"),
        .executableTarget(name: "veil-bench", dependencies: [
            "VeilKafka", "VeilEnvelope", "VeilService", "VeilClient", "VeilIngressClient", "VeilContracts", "CKafkaBaseline", argumentParser,
            "DispatcherService", "VeilStore", .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ], path: "Benchmarks/veil-bench"),

        // MARK: Tests
        .testTarget(name: "VeilEnvelopeTests", dependencies: [
            "VeilEnvelope", .product(name: "PropertyBased", package: "swift-property-based"),
        ], path: "Tests/VeilEnvelopeTests"),
        .testTarget(name: "VeilKafkaTests", dependencies: ["VeilKafka"], path: "Tests/VeilKafkaTests"),
        .testTarget(name: "VeilStoreTests", dependencies: ["VeilStore", "VeilKafka"], path: "Tests/VeilStoreTests"),
        .testTarget(name: "VeilServiceTests", dependencies: ["VeilService", "VeilEnvelope"], path: "Tests/VeilServiceTests"),
        .testTarget(name: "VeilPipelineTests", dependencies: [
            "VeilService", "VeilStore", "VeilKafka", "VeilEnvelope", "VeilClient", "VeilIngressClient",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "Hummingbird", package: "hummingbird"),
        ] + serviceLibraries.map { .init(stringLiteral: $0) }, path: "Tests/VeilPipelineTests"),
    ],
    swiftLanguageModes: [.v6]
)
