//! Risk tiers: how much autonomy a tool call gets.

use serde::{Deserialize, Serialize};

/// The risk tier of one tool call, decided in the broker from the tool and its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Tier {
    /// Autonomous.
    T1,
    /// Autonomous and logged.
    T2,
    /// Held for a human approver bound to the exact call.
    T3,
    /// Always refused.
    T4,
}

impl Tier {
    /// The tier as its number, 1 to 4.
    pub fn number(self) -> u8 {
        match self {
            Tier::T1 => 1,
            Tier::T2 => 2,
            Tier::T3 => 3,
            Tier::T4 => 4,
        }
    }
}

impl TryFrom<u8> for Tier {
    type Error = String;

    fn try_from(n: u8) -> Result<Self, Self::Error> {
        match n {
            1 => Ok(Tier::T1),
            2 => Ok(Tier::T2),
            3 => Ok(Tier::T3),
            4 => Ok(Tier::T4),
            other => Err(format!("tier must be 1, 2, 3 or 4, not `{other}`")),
        }
    }
}

impl From<Tier> for u8 {
    fn from(t: Tier) -> u8 {
        t.number()
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.number())
    }
}
