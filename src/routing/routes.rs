//! `[[routes]]`: which trunk a call or REFER target goes to.

use crate::config::{Route, Trunk};
use regex::Regex;

#[derive(Debug, Clone)]
struct Entry {
    pattern: Regex,
    trunk: Trunk,
    from: Option<Trunk>,
}

/// The route table: first matching route wins; with none, a call goes to the other side
/// (from the PBX to Teams, from Teams to the PBX).
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    entries: Vec<Entry>,
}

/// The outcome of a lookup, with the index of the route that decided (None: default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteDecision {
    pub trunk: Trunk,
    pub route: Option<usize>,
}

impl RouteTable {
    pub fn new(routes: &[Route]) -> RouteTable {
        RouteTable { entries: routes.iter().map(|r| Entry { pattern: r.pattern.0.clone(), trunk: r.trunk, from: r.from }).collect() }
    }

    /// The trunk for `number` (normalized, E.164 after the `to_teams` rules) of a call that
    /// arrived from `from`.
    pub fn route(&self, number: &str, from: Trunk) -> Trunk {
        self.decide(number, from).trunk
    }

    /// [`route`](Self::route), also saying which `[[routes]]` entry matched.
    pub fn decide(&self, number: &str, from: Trunk) -> RouteDecision {
        for (i, e) in self.entries.iter().enumerate() {
            if e.from.is_none_or(|f| f == from) && e.pattern.is_match(number) {
                return RouteDecision { trunk: e.trunk, route: Some(i) };
            }
        }
        RouteDecision { trunk: other_side(from), route: None }
    }
}

/// The default destination: the side the call did not come from.
pub fn other_side(from: Trunk) -> Trunk {
    match from {
        Trunk::Teams => Trunk::Pbx,
        Trunk::Pbx => Trunk::Teams,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pattern;

    fn route(m: &str, trunk: Trunk, from: Option<Trunk>) -> Route {
        Route { pattern: Pattern::new(m).unwrap(), trunk, from }
    }

    #[test]
    fn defaults_go_to_the_other_side() {
        let t = RouteTable::default();
        assert_eq!(t.route("+4681234711", Trunk::Pbx), Trunk::Teams);
        assert_eq!(t.route("+4681234711", Trunk::Teams), Trunk::Pbx);
        assert_eq!(t.decide("+1", Trunk::Teams), RouteDecision { trunk: Trunk::Pbx, route: None });
    }

    #[test]
    fn first_match_wins_with_from_filter() {
        let t = RouteTable::new(&[
            route(r"^\+468123\d{4}$", Trunk::Pbx, None),
            route(r"^\+4681239\d{3}$", Trunk::Teams, None), // shadowed by the first
            route(r"^\+46", Trunk::Teams, Some(Trunk::Teams)),
            route(r".", Trunk::Pbx, Some(Trunk::Pbx)),
        ]);
        // PBX extension range: to the PBX from either side
        assert_eq!(t.decide("+4681234711", Trunk::Teams), RouteDecision { trunk: Trunk::Pbx, route: Some(0) });
        assert_eq!(t.decide("+4681239000", Trunk::Pbx), RouteDecision { trunk: Trunk::Pbx, route: Some(0) });
        // Teams hairpin for national numbers arriving from Teams
        assert_eq!(t.decide("+46701234567", Trunk::Teams), RouteDecision { trunk: Trunk::Teams, route: Some(2) });
        // from the PBX: the catch-all PBX route (a loop, but it is what the table says)
        assert_eq!(t.decide("+46701234567", Trunk::Pbx), RouteDecision { trunk: Trunk::Pbx, route: Some(3) });
        // from Teams, non-national: no route, default
        assert_eq!(t.decide("+4420000000", Trunk::Teams), RouteDecision { trunk: Trunk::Pbx, route: None });
    }
}
