//! What the four statuses have in common: the kstatus fields (`observedGeneration` and the conditions),
//! read and written the same way whatever the kind, by the controller and by anything that waits on a
//! resource (tests, tools).

use super::common::Condition;
use super::{ApiKeyStatus, EnvironmentStatus, OrganizationStatus, UserStatus};

/// The kstatus fields of an orgkeeper status.
pub trait KstatusFields {
    fn conditions(&self) -> &[Condition];

    fn observed_generation(&self) -> Option<i64>;

    /// Records the conditions found for the object's generation `generation`.
    fn set_observed(&mut self, generation: Option<i64>, conditions: Vec<Condition>);

    /// The condition of this type (`Ready`, `Reconciling`, `Stalled`), if present.
    fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions().iter().find(|c| c.type_ == type_)
    }
}

macro_rules! kstatus_fields {
    ($($status:ty),*) => {$(
        impl KstatusFields for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }

            fn observed_generation(&self) -> Option<i64> {
                self.observed_generation
            }

            fn set_observed(&mut self, generation: Option<i64>, conditions: Vec<Condition>) {
                self.observed_generation = generation;
                self.conditions = conditions;
            }
        }
    )*};
}

kstatus_fields!(OrganizationStatus, EnvironmentStatus, UserStatus, ApiKeyStatus);
