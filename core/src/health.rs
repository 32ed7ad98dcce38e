//! Agent health as reported on the wire (HealthStatus 0x30) and as the pool uses it.

use serde::{Deserialize, Serialize};

/// Health of an agent connection, as the agent reports it in a `HealthStatus` frame.
///
/// The wire value is an integer (1 healthy, 2 degraded, 3 draining, 4 unhealthy); the pool
/// selects healthy connections first, degraded ones only when no healthy one is left, and never
/// draining or unhealthy ones.
///
/// ```
/// use agent_protocol_core::HealthState;
/// assert_eq!(HealthState::from_wire(3), Some(HealthState::Draining));
/// assert!(HealthState::Degraded.is_selectable());
/// assert!(!HealthState::Unhealthy.is_selectable());
/// ```
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Serving normally (wire value 1).
    #[default]
    Healthy,
    /// Serving, but slower or partly impaired (wire value 2).
    Degraded,
    /// Finishing in-flight work; takes no new requests (wire value 3).
    Draining,
    /// Not serving (wire value 4).
    Unhealthy,
}

impl HealthState {
    /// Maps the wire integer to a state; 0 (unspecified) and unknown values give `None`.
    pub fn from_wire(value: i64) -> Option<Self> {
        match value {
            1 => Some(Self::Healthy),
            2 => Some(Self::Degraded),
            3 => Some(Self::Draining),
            4 => Some(Self::Unhealthy),
            _ => None,
        }
    }

    /// The integer sent on the wire.
    pub fn to_wire(self) -> i32 {
        match self {
            Self::Healthy => 1,
            Self::Degraded => 2,
            Self::Draining => 3,
            Self::Unhealthy => 4,
        }
    }

    /// Whether the pool may send new requests to a connection in this state.
    pub fn is_selectable(self) -> bool {
        matches!(self, Self::Healthy | Self::Degraded)
    }

    /// Packs into a `u8` for storage in an atomic (see [`HealthState::from_u8`]).
    pub fn as_u8(self) -> u8 {
        self.to_wire() as u8
    }

    /// Inverse of [`HealthState::as_u8`]; unknown values read as `Unhealthy` so a corrupt cell
    /// never makes a connection look usable.
    pub fn from_u8(value: u8) -> Self {
        Self::from_wire(i64::from(value)).unwrap_or(Self::Unhealthy)
    }
}
