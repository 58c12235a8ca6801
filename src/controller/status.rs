//! Statuses in the kstatus convention: `observedGeneration` and three conditions, `Ready`, `Reconciling`
//! and `Stalled`, whose reasons are the domain's (`UnknownAccount`, `SecretMissing`, ...) and whose messages
//! say what to do. A status is written with server-side apply under its own field manager, and only
//! when it differs from what the object already shows; an event marks each change of `Ready`.
//!
//! `Ready=True` means the declared state is reached, which includes a revoked key: revocation was asked
//! for and is done, so `kubectl wait --for=condition=Ready` and kstatus-based tools (Flux, Argo CD) see it
//! converged. `Ready=False` is left for what is on its way or needs a person.
//!
//! A paused resource (`orgkeeper.dev/paused: "true"`) is `Ready=False` with reason `Paused`, neither
//! reconciling nor stalled: nothing is wrong and nothing happens until someone resumes it.
//!
//! Waiting for another resource is normal for a while: `kubectl apply -k` creates ApiKeys before the
//! Environment they name, and the account registry may lag. A wait is announced with a Normal event;
//! only when it has lasted `--warn-after-waiting` (2 minutes by default) does a Warning event follow, once
//! per wait.

use std::time::Duration;

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
    /// The key is revoked: final, and not an error (the declared state is reached: `Ready=True`).
    Revoked { message: String },
    /// On its way (a key being issued); another reconcile follows.
    Progressing { reason: &'static str, message: String },
    /// The reconcile failed (store or API server unreachable) and is retried.
    Failed { message: String },
    /// Paused by its annotation (or its Organization's): nothing is changed for it until the pause ends.
    Paused { message: String },
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
            Outcome::Paused { .. } => "Paused",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Outcome::Ready { message, .. }
            | Outcome::Waiting { message, .. }
            | Outcome::Stalled { message, .. }
            | Outcome::Revoked { message }
            | Outcome::Progressing { message, .. }
            | Outcome::Failed { message }
            | Outcome::Paused { message } => message,
        }
    }

    /// Whether the declared state is reached: the `Ready` condition. A revoked key has reached it.
    pub fn is_ready(&self) -> bool {
        matches!(self, Outcome::Ready { .. } | Outcome::Revoked { .. })
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

    /// Waiting is normal at first (only a lasting wait is a warning); a stalled object or a
    /// failed reconcile needs a person.
    fn event_type(&self) -> EventType {
        match self {
            Outcome::Stalled { .. } | Outcome::Failed { .. } => EventType::Warning,
            Outcome::Ready { .. }
            | Outcome::Revoked { .. }
            | Outcome::Progressing { .. }
            | Outcome::Waiting { .. }
            | Outcome::Paused { .. } => EventType::Normal,
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

/// A time in seconds since the Unix epoch as Kubernetes writes times; `None` if out of range.
pub fn rfc3339(seconds: i64) -> Option<String> {
    Timestamp::from_second(seconds).ok().map(|t| t.to_string())
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
    let uid = object.uid().unwrap_or_default();
    let patience = ctx.settings.warn_after_waiting;
    match persistent_wait(outcome, status.conditions(), Timestamp::now(), patience) {
        Some(waited) if ctx.first_warning(&uid) => warn_persistent(ctx, object, outcome, waited).await,
        Some(_) => {}
        None => ctx.wait_over(&uid),
    }
    if previous == Some(&status) {
        return Ok(false);
    }
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

/// How long the object has been waiting, if `outcome` is a wait that has lasted `patience`: the wait began
/// when `Ready` last turned False (kept across reconciles and controller restarts).
pub fn persistent_wait(
    outcome: &Outcome,
    conditions: &[Condition],
    now: Timestamp,
    patience: Duration,
) -> Option<Duration> {
    if !matches!(outcome, Outcome::Waiting { .. }) {
        return None;
    }
    let ready = conditions.iter().find(|c| c.type_ == "Ready" && c.status == "False")?;
    let since: Timestamp = ready.last_transition_time.parse().ok()?;
    let waited = Duration::try_from(now.duration_since(since)).ok()?;
    (waited >= patience).then_some(waited)
}

/// An event for a change of `Ready`.
async fn announce<K: OrgkeeperResource>(ctx: &Context, object: &K, outcome: &Outcome) {
    record(
        ctx,
        object,
        outcome.event_type(),
        outcome.reason(),
        outcome.message().to_owned(),
    )
    .await;
}

/// The Warning for a wait that lasts: the same reason, and for how long it has lasted.
async fn warn_persistent<K: OrgkeeperResource>(ctx: &Context, object: &K, outcome: &Outcome, waited: Duration) {
    let minutes = waited.as_secs() / 60;
    let note = format!("still waiting after {minutes} minute(s): {}", outcome.message());
    record(ctx, object, EventType::Warning, outcome.reason(), note).await;
}

/// Records an event on `object`. Failing to record it never fails the reconcile.
pub async fn record<K: OrgkeeperResource>(ctx: &Context, object: &K, type_: EventType, reason: &str, mut note: String) {
    // The API server refuses notes over 1 kB.
    if note.len() > 1000 {
        let mut end = 1000;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(object = %object.name_any(), error = %super::describe(&error), "could not record an event");
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
    fn a_revoked_key_has_reached_its_declared_state() {
        let revoked = Outcome::from_problem(&problem(Reason::Revoked));
        let found = conditions(&revoked, Some(2), &[], "t0");
        assert_eq!(
            find(&found, "Ready").status,
            "True",
            "kubectl wait --for=condition=Ready returns"
        );
        assert_eq!(find(&found, "Reconciling").status, "False");
        assert_eq!(find(&found, "Stalled").status, "False");
        assert_eq!(revoked.event_type(), EventType::Normal);
    }

    #[test]
    fn a_wait_is_normal_at_first_and_a_warning_once_it_persists() {
        let waiting = Outcome::from_problem(&problem(Reason::EnvironmentNotFound));
        assert_eq!(waiting.event_type(), EventType::Normal);
        let began: Timestamp = "2026-01-01T10:00:00Z".parse().unwrap();
        let found = conditions(&waiting, Some(1), &[], &began.to_string());
        let patience = Duration::from_secs(120);
        let at = |seconds: i64| began + k8s_openapi::jiff::SignedDuration::from_secs(seconds);
        assert_eq!(
            persistent_wait(&waiting, &found, at(30), patience),
            None,
            "seconds of apply order"
        );
        assert_eq!(persistent_wait(&waiting, &found, at(119), patience), None);
        assert_eq!(
            persistent_wait(&waiting, &found, at(125), patience),
            Some(Duration::from_secs(125))
        );
        // The wait began when Ready turned False, whatever the reconciles in between.
        let again = conditions(&waiting, Some(1), &found, &at(100).to_string());
        assert_eq!(
            persistent_wait(&waiting, &again, at(125), patience),
            Some(Duration::from_secs(125))
        );
        // Only waits turn into warnings: a stalled object already warned when it stalled.
        let stalled = Outcome::from_problem(&problem(Reason::SecretConflict));
        let found = conditions(&stalled, Some(1), &[], &began.to_string());
        assert_eq!(persistent_wait(&stalled, &found, at(600), patience), None);
        assert_eq!(stalled.event_type(), EventType::Warning);
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
