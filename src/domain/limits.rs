//! Per-environment limits. Each environment's effective limits are resolved in three layers: the plan's
//! defaults, then the organization's overrides, then the environment's own overrides. `None` in an
//! effective limit means unlimited.
//!
//! Every limit is one entry of [`for_each_limit!`]; that one table generates the domain types here, the
//! CRD's `LimitsSpec` and `EffectiveLimitsStatus` (crd/common.rs), and the store's limit columns (through
//! [`LIMIT_FIELDS`]). A new limit is: its entry, its migration (a nullable BIGINT column of the same name on
//! `organizations` and `environments`), its enforcement (the sidecar) and its docs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The one list of limits. Each entry: its description (the CRD field's doc), its Rust field name (also its
/// store column), its user-facing name, the largest value the CRD schema accepts, and each plan's default
/// (`None`: unlimited). Call it with the name of a macro that takes the entries; the consumers are
/// `define_limits!` below and `limit_types!` in crd/common.rs.
macro_rules! for_each_limit {
    ($then:ident) => {
        $then! {
            /// All requests per minute (429 when exceeded). Developer: 60000; Growth: unlimited.
            requests_per_minute "requestsPerMinute" max 1_000_000_000,
                developer Some(60_000), growth None;
            /// Facts inserted or deleted per minute; writes count toward requestsPerMinute too. Developer: 1000; Growth: 30000.
            fact_writes_per_minute "factWritesPerMinute" max 1_000_000_000,
                developer Some(1_000), growth Some(30_000);
            /// Requests in flight at once (429 when exceeded). Developer: 4; Growth: unlimited.
            max_concurrent_requests "maxConcurrentRequests" max 1_000_000,
                developer Some(4), growth None;
            /// Facts in one write request (413 when exceeded). Developer: 20; Growth: 1000.
            max_batch_facts "maxBatchFacts" max 1_000_000,
                developer Some(20), growth Some(1_000);
            /// Bytes in one write request body (413 when exceeded). Default 983040 (960 KiB).
            max_write_body_bytes "maxWriteBodyBytes" max 67_108_864,
                developer Some($crate::domain::limits::MAX_WRITE_BODY_BYTES),
                growth Some($crate::domain::limits::MAX_WRITE_BODY_BYTES);
        }
    };
}
pub(crate) use for_each_limit;

/// 960 KiB, the largest write body Oso Cloud accepts on every plan.
pub const MAX_WRITE_BODY_BYTES: u64 = 983_040;

/// One limit, as the store and messages name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitField {
    /// The user-facing name (`maxBatchFacts`), in manifests, plans and error messages.
    pub name: &'static str,
    /// The store column (`max_batch_facts`) on both `organizations` and `environments`.
    pub column: &'static str,
    /// The largest value the CRD schema accepts.
    pub max: u64,
}

macro_rules! define_limits {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident $name:literal max $max:literal, developer $developer:expr, growth $growth:expr;
    )*) => {
        /// How many limits there are.
        pub const LIMIT_COUNT: usize = [$(stringify!($field)),*].len();

        /// Every limit, in the order of [`LimitOverrides::values`].
        pub const LIMIT_FIELDS: [LimitField; LIMIT_COUNT] = [$(
            LimitField { name: $name, column: stringify!($field), max: $max },
        )*];

        /// Overrides declared on an organization or an environment. An absent field inherits from the layer
        /// below.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub struct LimitOverrides {$(
            $(#[doc = $doc])*
            #[serde(rename = $name, default, skip_serializing_if = "Option::is_none")]
            pub $field: Option<u64>,
        )*}

        /// The limits a sidecar enforces for one environment. `None` means unlimited.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub struct EffectiveLimits {$(
            $(#[doc = $doc])*
            #[serde(rename = $name)]
            pub $field: Option<u64>,
        )*}

        impl LimitOverrides {
            /// The values in the order of [`LIMIT_FIELDS`].
            pub fn values(&self) -> [Option<u64>; LIMIT_COUNT] {
                [$(self.$field),*]
            }

            /// The inverse of [`LimitOverrides::values`].
            pub fn from_values(values: [Option<u64>; LIMIT_COUNT]) -> Self {
                let [$($field),*] = values;
                LimitOverrides { $($field),* }
            }
        }

        impl EffectiveLimits {
            /// No limit at all; a base for tests and code that set only the limits they care about
            /// (`EffectiveLimits { max_batch_facts: Some(5), ..EffectiveLimits::UNLIMITED }`), so that a new
            /// limit does not touch them.
            pub const UNLIMITED: EffectiveLimits = EffectiveLimits { $($field: None),* };

            /// Plan defaults, then the organization's overrides, then the environment's: the most specific
            /// wins, field by field.
            pub fn resolve(plan: PlanTier, organization: &LimitOverrides, environment: &LimitOverrides) -> Self {
                let defaults = plan.default_limits();
                EffectiveLimits {$(
                    $field: environment.$field.or(organization.$field).or(defaults.$field),
                )*}
            }
        }

        impl PlanTier {
            /// The limits an environment gets when nobody overrides them.
            pub fn default_limits(self) -> EffectiveLimits {
                match self {
                    PlanTier::Developer => EffectiveLimits { $($field: $developer),* },
                    PlanTier::Growth => EffectiveLimits { $($field: $growth),* },
                }
            }
        }
    };
}

for_each_limit!(define_limits);

/// The commercial plan an organization is on; it only decides the default limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PlanTier {
    #[default]
    Developer,
    Growth,
}

impl PlanTier {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanTier::Developer => "Developer",
            PlanTier::Growth => "Growth",
        }
    }
}

impl fmt::Display for PlanTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PlanTier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Developer" => Ok(PlanTier::Developer),
            "Growth" => Ok(PlanTier::Growth),
            other => Err(format!("unknown plan {other:?}")),
        }
    }
}

impl LimitOverrides {
    pub fn is_empty(&self) -> bool {
        *self == LimitOverrides::default()
    }

    /// Each field with its user-facing name, for plans and error messages.
    pub fn fields(&self) -> [(&'static str, Option<u64>); LIMIT_COUNT] {
        let values = self.values();
        std::array::from_fn(|i| (LIMIT_FIELDS[i].name, values[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_have_the_documented_defaults() {
        let dev = PlanTier::Developer.default_limits();
        assert_eq!(dev.requests_per_minute, Some(60_000));
        assert_eq!(dev.fact_writes_per_minute, Some(1_000));
        assert_eq!(dev.max_concurrent_requests, Some(4));
        assert_eq!(dev.max_batch_facts, Some(20));
        assert_eq!(dev.max_write_body_bytes, Some(983_040));
        let growth = PlanTier::Growth.default_limits();
        assert_eq!(growth.requests_per_minute, None);
        assert_eq!(growth.fact_writes_per_minute, Some(30_000));
        assert_eq!(growth.max_concurrent_requests, None);
        assert_eq!(growth.max_batch_facts, Some(1_000));
    }

    #[test]
    fn the_most_specific_layer_wins_field_by_field() {
        let org = LimitOverrides {
            fact_writes_per_minute: Some(500),
            max_batch_facts: Some(50),
            ..Default::default()
        };
        let env = LimitOverrides {
            max_batch_facts: Some(5),
            ..Default::default()
        };
        let limits = EffectiveLimits::resolve(PlanTier::Developer, &org, &env);
        assert_eq!(limits.requests_per_minute, Some(60_000), "plan default");
        assert_eq!(limits.fact_writes_per_minute, Some(500), "organization override");
        assert_eq!(
            limits.max_batch_facts,
            Some(5),
            "environment override beats organization"
        );
    }

    #[test]
    fn values_round_trip_in_the_order_of_the_fields() {
        let overrides = LimitOverrides {
            requests_per_minute: Some(1),
            max_write_body_bytes: Some(5),
            ..Default::default()
        };
        assert_eq!(LimitOverrides::from_values(overrides.values()), overrides);
        assert_eq!(overrides.fields()[0], ("requestsPerMinute", Some(1)));
        assert_eq!(LIMIT_FIELDS[4].column, "max_write_body_bytes");
        let json = serde_json::to_value(overrides).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"requestsPerMinute": 1, "maxWriteBodyBytes": 5})
        );
    }

    #[test]
    fn unlimited_is_what_no_layer_limits() {
        let unlimited = PlanTier::Growth.default_limits();
        let everything_lifted = EffectiveLimits {
            fact_writes_per_minute: None,
            max_batch_facts: None,
            max_write_body_bytes: None,
            ..unlimited
        };
        assert_eq!(everything_lifted, EffectiveLimits::UNLIMITED);
    }

    #[test]
    fn an_override_can_cap_an_unlimited_plan_default() {
        let env = LimitOverrides {
            requests_per_minute: Some(10),
            ..Default::default()
        };
        let limits = EffectiveLimits::resolve(PlanTier::Growth, &LimitOverrides::default(), &env);
        assert_eq!(limits.requests_per_minute, Some(10));
        assert_eq!(limits.max_concurrent_requests, None);
    }
}
