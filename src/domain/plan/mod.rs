//! The plan: the ordered list of changes that takes the store from what it holds to what is declared.
//!
//! Planning is a pure function of three inputs (declarations, the store's view of the declared organizations,
//! and the known accounts), so `orgkeeper plan`, `orgkeeper apply` and the controller all agree on what must
//! happen, and reconciling twice plans nothing the second time.
//!
//! - `change`: the [`Change`] type, one change to the store, and what each one means for keys;
//! - `display`: how a change reads in `orgkeeper plan` (the `+`/`~`/`-` lines and field diffs);
//! - `grouping`: declarations sorted into organizations, with duplicates and dangling references set aside;
//! - `planner`: the per-organization planner that compares declarations with the store.

mod change;
mod display;
mod grouping;
mod planner;

use serde::Serialize;

pub use change::Change;
pub use planner::{plan, plan_at, unix_now};

use super::model::ObjectRef;
use super::rules::Problem;

/// The outcome of planning: the changes to make, and the declared objects that cannot be carried out.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub problems: Vec<Problem>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Counts of (added, changed, removed) for the summary line.
    pub fn summary(&self) -> (usize, usize, usize) {
        self.changes
            .iter()
            .fold((0, 0, 0), |(a, c, r), change| match change.symbol() {
                '+' => (a + 1, c, r),
                '~' => (a, c + 1, r),
                _ => (a, c, r + 1),
            })
    }

    pub fn problems_for(&self, object: &ObjectRef) -> impl Iterator<Item = &Problem> {
        self.problems.iter().filter(move |p| &p.object == object)
    }
}

#[cfg(test)]
mod tests;
