//! Statuses in the kstatus convention: `observedGeneration` and three conditions, `Ready`, `Reconciling`
//! and `Stalled`, whose reasons are the domain's (`UnknownAccount`, `SecretMissing`, ...) and whose messages
//! say what to do. A status is written with server-side apply under its own field manager, and only
//! when it differs from what the object already shows; an event marks each change of `Ready`.

use k8s_openapi::jiff::{Timestamp, Unit};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::context::Context;
use super::resource::OrgkeeperResource;
use super::{Error, STATUS_MANAGER};
use crate::crd::{Condition, KstatusFields};
use crate::domain::{Problem, Reason};

/// Where an object stands after a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Carried out; nothing left to do.
    Ready { reason: &'static str, message: String },
    /// Cannot be carried out yet, and may become possible without a change to the object (an account
    /// registered, an environment created, a key slot freed): retried with backoff.
    Waiting { reason: Reason, message: String },
    /// Cannot be carried out until someone changes something.
    Stalled { reason: Reason, message: String },
    /// The key is revoked: final, and not an error.
    Revoked { message: String },
    /// On its way (a key being issued); another reconcile follows.
    Progressing { reason: &'static str, message: String },
    /// The reconcile failed (store or API server unreachable) and is retried.
    Failed { message: String },
}

impl Outcome {
    pub fn from_problem(problem: &Problem) -> Self {
        let (reason, message) = (problem.reason, problem.message.clone());
        if reason == Reason::Revoked {
            Outcome::Revoked { message }
        } else if reason.is_transient() {
            Outcome::Waiting { reason, message }
        } else {
            Outcome::Stalled { reason, message }
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Outcome::Ready { reason, .. } | Outcome::Progressing { reason, .. } => reason,
            Outcome::Waiting { reason, .. } | Outcome::Stalled { reason, .. } => reason.as_str(),
            Outcome::Revoked { .. } => Reason::Revoked.as_str(),
            Outcome::Failed { .. } => "ReconcileFailed",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Outcome::Ready { message, .. }
            | Outcome::Waiting { message, .. }
            | Outcome::Stalled { message, .. }
            | Outcome::Revoked { message }
            | Outcome::Progressing { message, .. }
            | Outcome::Failed { message } => message,
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(self, Outcome::Ready { .. })
    }

    /// Whether the object is still on its way (the `Reconciling` condition), and so is looked at again
    /// soon rather than at the next resync.
    pub fn wants_retry(&self) -> bool {
        matches!(
            self,
            Outcome::Waiting { .. } | Outcome::Progressing { .. } | Outcome::Failed { .. }
        )
    }

    fn stalled(&self) -> bool {
        matches!(self, Outcome::Stalled { .. })
    }

    fn event_type(&self) -> EventType {
        match self {
            Outcome::Ready { .. } | Outcome::Revoked { .. } | Outcome::Progressing { .. } => EventType::Normal,
            _ => EventType::Warning,
        }
    }
}

/// The three conditions for `outcome`. A condition whose status did not change keeps its
/// `lastTransitionTime`, so that an unchanged outcome yields an identical status and no write.
pub fn conditions(outcome: &Outcome, generation: Option<i64>, previous: &[Condition], now: &str) -> Vec<Condition> {
    let flag = |on: bool| if on { "True" } else { "False" };
    let (reason, message) = (outcome.reason(), outcome.message());
    [
        ("Ready", flag(outcome.is_ready()), message),
        (
            "Reconciling",
            flag(outcome.wants_retry()),
            if outcome.wants_retry() { message } else { "" },
        ),
        (
            "Stalled",
            flag(outcome.stalled()),
            if outcome.stalled() { message } else { "" },
        ),
    ]
    .into_iter()
    .map(|(type_, status, message)| {
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.to_owned(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            last_transition_time,
            observed_generation: generation,
        }
    })
    .collect()
}

/// Now, as Kubernetes writes times (RFC 3339, whole seconds).
pub fn now() -> String {
    Timestamp::now()
        .round(Unit::Second)
        .map_or_else(|_| Timestamp::now().to_string(), |t| t.to_string())
}

/// Writes `status` (conditions and observed generation filled in from `outcome`) if it differs from what
/// the object shows; returns whether it wrote.
pub async fn publish<K: OrgkeeperResource>(
    ctx: &Context,
    object: &K,
    mut status: K::Status,
    outcome: &Outcome,
) -> Result<bool, Error> {
    let generation = object.meta().generation;
    let previous = object.status();
    let previous_conditions = previous.map(KstatusFields::conditions).unwrap_or_default();
    status.set_observed(generation, conditions(outcome, generation, previous_conditions, &now()));
    if previous == Some(&status) {
        return Ok(false);
    }
    let uid = object.uid().unwrap_or_default();
    let text = serde_json::to_string(&status).map_err(|e| Error::Vanished(format!("status is not JSON: {e}")))?;
    if ctx.recently_written(&uid, &text) {
        return Ok(false);
    }
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(STATUS_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    ctx.written(&uid, &text);
    ctx.metrics.status_written(K::KIND);
    let was = previous_conditions.iter().find(|c| c.type_ == "Ready");
    if was.is_none_or(|c| c.reason != outcome.reason() || c.status != flag_of(outcome)) {
        announce(ctx, object, outcome).await;
    }
    Ok(true)
}

fn flag_of(outcome: &Outcome) -> &'static str {
    if outcome.is_ready() { "True" } else { "False" }
}

/// An event for a change of `Ready`. Failing to record it never fails the reconcile.
async fn announce<K: OrgkeeperResource>(ctx: &Context, object: &K, outcome: &Outcome) {
    let mut note = outcome.message().to_owned();
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    let event = Event {
        type_: outcome.event_type(),
        reason: outcome.reason().to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(object = %object.name_any(), %error, "could not record an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Kind, ObjectRef};

    fn problem(reason: Reason) -> Problem {
        Problem {
            object: ObjectRef::new(Kind::User, "team", "mallory"),
            reason,
            message: "why and what to do".into(),
        }
    }

    fn find<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
        conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn a_transient_problem_is_reconciling_and_a_permanent_one_stalled() {
        let waiting = conditions(
            &Outcome::from_problem(&problem(Reason::UnknownAccount)),
            Some(3),
            &[],
            "t0",
        );
        assert_eq!(find(&waiting, "Ready").status, "False");
        assert_eq!(find(&waiting, "Ready").reason, "UnknownAccount");
        assert_eq!(find(&waiting, "Reconciling").status, "True");
        assert_eq!(find(&waiting, "Stalled").status, "False");
        assert!(waiting.iter().all(|c| c.observed_generation == Some(3)));

        let stalled = conditions(
            &Outcome::from_problem(&problem(Reason::SecretConflict)),
            Some(3),
            &[],
            "t0",
        );
        assert_eq!(find(&stalled, "Stalled").status, "True");
        assert_eq!(find(&stalled, "Stalled").message, "why and what to do");
        assert_eq!(find(&stalled, "Reconciling").status, "False");

        let revoked = conditions(&Outcome::from_problem(&problem(Reason::Revoked)), Some(3), &[], "t0");
        assert_eq!(find(&revoked, "Ready").reason, "Revoked");
        assert_eq!(find(&revoked, "Stalled").status, "False");
    }

    #[test]
    fn an_unchanged_outcome_gives_an_identical_status() {
        let ready = Outcome::Ready {
            reason: "Issued",
            message: "key k is live".into(),
        };
        let first = conditions(&ready, Some(1), &[], "t0");
        let again = conditions(&ready, Some(1), &first, "t1");
        assert_eq!(first, again);
        // Ready flips: only the conditions whose status changed get a new transition time.
        let missing = Outcome::from_problem(&problem(Reason::SecretMissing));
        let later = conditions(&missing, Some(1), &first, "t2");
        assert_eq!(find(&later, "Ready").last_transition_time, "t2");
        assert_eq!(find(&later, "Reconciling").last_transition_time, "t0");
        assert_eq!(find(&later, "Stalled").last_transition_time, "t2");
    }

    #[test]
    fn times_are_rfc3339_in_whole_seconds() {
        let now = now();
        assert!(now.ends_with('Z') && !now.contains('.'), "{now}");
    }
}
