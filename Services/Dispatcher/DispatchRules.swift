import Foundation

/// What a service request needs, decided by declarative rules kept in a file
/// (`VEIL_DISPATCH_RULES_FILE`, JSON): the first rule whose conditions all hold wins.
///
/// ```json
/// {"rules": [
///   {"name": "outage", "when": {"categories": ["outage"], "minPriority": 3}, "then": "technician",
///    "skills": ["fiber"], "priority": 5},
///   {"name": "billing", "when": {"keywords": ["invoice", "refund"]}, "then": "agent"},
///   {"name": "gold customers", "when": {"tiers": ["gold"]}, "then": "technician", "skills": ["general"]}
/// ], "default": "none"}
/// ```
public struct DispatchRules: Sendable, Hashable, Codable {
    public enum Action: String, Sendable, Hashable, Codable {
        case technician, agent, none
    }

    public struct Conditions: Sendable, Hashable, Codable {
        /// Any of these categories (case-insensitive); absent: any.
        public var categories: [String]?
        /// At least this priority; absent: any.
        public var minPriority: Int?
        /// Any of these words in the description (case-insensitive, whole words); absent: any.
        public var keywords: [String]?
        /// Any of these customer tiers; absent: any.
        public var tiers: [String]?

        public init(categories: [String]? = nil, minPriority: Int? = nil, keywords: [String]? = nil, tiers: [String]? = nil) {
            self.categories = categories
            self.minPriority = minPriority
            self.keywords = keywords
            self.tiers = tiers
        }
    }

    public struct Rule: Sendable, Hashable, Codable {
        public var name: String
        public var when: Conditions
        public var then: Action
        /// Skills the technician must have (for `technician`).
        public var skills: [String]?
        /// Overrides the request's priority.
        public var priority: Int?

        public init(name: String, when: Conditions, then: Action, skills: [String]? = nil, priority: Int? = nil) {
            self.name = name
            self.when = when
            self.then = then
            self.skills = skills
            self.priority = priority
        }
    }

    public var rules: [Rule]
    /// What happens when no rule matches.
    public var `default`: Action

    public init(rules: [Rule], default: Action = .none) {
        self.rules = rules
        self.default = `default`
    }

    /// The facts a rule looks at.
    public struct Facts: Sendable, Hashable {
        public var category: String
        public var priority: Int
        public var description: String
        public var tier: String?

        public init(category: String, priority: Int, description: String, tier: String?) {
            self.category = category
            self.priority = priority
            self.description = description
            self.tier = tier
        }
    }

    /// The decision for one request.
    public struct Decision: Sendable, Hashable {
        public var action: Action
        public var rule: String?
        public var skills: [String]
        public var priority: Int

        public init(action: Action, rule: String?, skills: [String], priority: Int) {
            self.action = action
            self.rule = rule
            self.skills = skills
            self.priority = priority
        }
    }

    public func decide(_ facts: Facts) -> Decision {
        let words = Set(facts.description.lowercased().split { !$0.isLetter && !$0.isNumber }.map(String.init))
        for rule in rules {
            let c = rule.when
            if let categories = c.categories, !categories.contains(where: { $0.caseInsensitiveCompare(facts.category) == .orderedSame }) { continue }
            if let minimum = c.minPriority, facts.priority < minimum { continue }
            if let keywords = c.keywords, !keywords.contains(where: { words.contains($0.lowercased()) }) { continue }
            if let tiers = c.tiers, !tiers.contains(where: { $0.caseInsensitiveCompare(facts.tier ?? "") == .orderedSame }) { continue }
            return Decision(action: rule.then, rule: rule.name, skills: rule.skills ?? [], priority: rule.priority ?? facts.priority)
        }
        return Decision(action: self.default, rule: nil, skills: [], priority: facts.priority)
    }

    /// Reads and validates a rules file.
    public static func load(from url: URL) throws -> DispatchRules {
        let rules = try JSONDecoder().decode(DispatchRules.self, from: Data(contentsOf: url))
        for rule in rules.rules where rule.then == .technician && (rule.skills ?? []).contains(where: \.isEmpty) {
            throw AssignmentError.invalid("rule \(rule.name): empty skill name")
        }
        return rules
    }

    /// The rules used when no file is configured: outages and installations need a
    /// technician, chats and billing questions an agent, everything else nothing.
    public static let standard = DispatchRules(rules: [
        Rule(name: "outage", when: Conditions(categories: ["outage"]), then: .technician, skills: ["network"]),
        Rule(name: "installation", when: Conditions(categories: ["installation"]), then: .technician, skills: ["installation"]),
        Rule(name: "chat", when: Conditions(categories: ["chat"]), then: .agent),
        Rule(name: "billing", when: Conditions(keywords: ["invoice", "bill", "refund", "payment"]), then: .agent),
    ], default: .none)
}
