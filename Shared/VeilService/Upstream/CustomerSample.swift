/// Writes a realistic synthetic customer file (`veilctl upstream sample`): ids, names,
/// phone numbers, e-mail and postal addresses (which the default export policy drops)
/// and business columns (which it keeps). Deterministic for a seed.
public struct CustomerSample: Sendable {
    public static let header = ["customer_id", "first_name", "last_name", "phone", "email", "street", "city", "postcode",
                                "birth_year", "tier", "plan", "household_size", "customer_since", "preferred_channel",
                                "lifetime_value_eur", "region"]

    static let firstNames = ["Anna", "Ben", "Clara", "David", "Elif", "Felix", "Greta", "Hannes", "Ida", "Jonas", "Karla", "Lukas",
                             "Mila", "Noah", "Olivia", "Paul", "Quentin", "Rosa", "Sami", "Tara", "Uwe", "Vera", "Wim", "Yara", "Zoe"]
    static let lastNames = ["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker", "Schulz", "Hoffmann",
                            "Koch", "Richter", "Klein", "Wolf", "Schröder", "Neumann", "Schwarz", "Zimmermann", "Braun", "Krüger"]
    static let cities = [("Berlin", "10"), ("Hamburg", "20"), ("München", "80"), ("Köln", "50"), ("Frankfurt", "60"),
                         ("Stuttgart", "70"), ("Düsseldorf", "40"), ("Leipzig", "04"), ("Dresden", "01"), ("Bremen", "28")]
    static let streets = ["Hauptstraße", "Bahnhofstraße", "Gartenweg", "Lindenallee", "Schulstraße", "Kirchplatz", "Am Markt"]
    static let tiers = ["bronze", "bronze", "bronze", "silver", "silver", "gold", "platinum"]
    static let plans = ["prepaid-s", "prepaid-m", "contract-m", "contract-l", "contract-xl", "family", "business"]
    static let channels = ["app", "app", "chat", "phone", "shop", "web"]

    /// The customer id of row `index` (0-based), also usable to send inquiries for it.
    public static func customerID(_ index: Int) -> String {
        let digits = String(index + 1)
        return "C" + String(repeating: "0", count: max(0, 8 - digits.count)) + digits
    }

    /// The CSV text of `count` customers.
    public static func csv(count: Int, seed: UInt64 = 42) -> String {
        var random = SplitMix64(seed: seed)
        var out = header.joined(separator: ",") + "\n"
        out.reserveCapacity(count * 180)
        for index in 0..<count {
            func pick<T>(_ list: [T]) -> T { list[Int(random.next() % UInt64(list.count))] }
            let first = pick(firstNames), last = pick(lastNames)
            let (city, prefix) = pick(cities)
            let phone = "+49 15\(random.next() % 10) \(1_000_000 + random.next() % 9_000_000)"
            let row: [String] = [
                customerID(index), first, last, phone,
                "\(first.lowercased()).\(last.lowercased())\(random.next() % 100)@example.net",
                "\(pick(streets)) \(1 + random.next() % 120)", city, "\(prefix)\(100 + random.next() % 900)",
                String(1940 + random.next() % 66), pick(tiers), pick(plans), String(1 + random.next() % 6),
                "20\(10 + random.next() % 16)-\(String(format2: 1 + random.next() % 12))-01", pick(channels),
                String(50 + random.next() % 9_950), city == "München" || city == "Stuttgart" ? "south" : "north",
            ]
            out += row.map(CSVReader.escape).joined(separator: ",") + "\n"
        }
        return out
    }
}

/// A small, fast, seedable generator (SplitMix64).
public struct SplitMix64: RandomNumberGenerator, Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension String {
    init(format2 value: UInt64) { self = value < 10 ? "0\(value)" : "\(value)" }
}
