//! Failpoints: a testing hook that aborts the process at a chosen step of key issuance or rotation, so that tests can
//! prove a crash at any step is safe to resume. Set `ORGKEEPER_FAILPOINT=<step>[:<n>]` to abort the n-th
//! time (default the first) the step is reached. Unset, it costs one branch.

use std::sync::atomic::{AtomicU64, Ordering};

/// The steps of issuance, then of rotation, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Keys are recorded pending (hash only) and committed; no Secret exists yet.
    AfterPendingCommit,
    /// One Secret has been created; its key is still pending.
    AfterSecretCreate,
    /// Keys are marked live and committed; statuses are not written yet.
    AfterLiveCommit,
    /// Rotation step 1 is committed: the new key is live and incoming; the Secret still holds the old key.
    RotationAfterRecord,
    /// Rotation step 2: the Secret holds the new key; the old key is still current (no overlap counting).
    RotationAfterSecretWrite,
    /// Rotation step 3 is committed: the new key is current and the old one in its overlap.
    RotationAfterCommit,
}

impl Step {
    /// The steps of issuing a new key.
    pub const ISSUANCE: [Step; 3] = [Step::AfterPendingCommit, Step::AfterSecretCreate, Step::AfterLiveCommit];
    /// The steps of rotating a key.
    pub const ROTATION: [Step; 3] = [
        Step::RotationAfterRecord,
        Step::RotationAfterSecretWrite,
        Step::RotationAfterCommit,
    ];
    pub const ALL: [Step; 6] = [
        Step::AfterPendingCommit,
        Step::AfterSecretCreate,
        Step::AfterLiveCommit,
        Step::RotationAfterRecord,
        Step::RotationAfterSecretWrite,
        Step::RotationAfterCommit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::AfterPendingCommit => "after-pending-commit",
            Step::AfterSecretCreate => "after-secret-create",
            Step::AfterLiveCommit => "after-live-commit",
            Step::RotationAfterRecord => "rotation-after-record",
            Step::RotationAfterSecretWrite => "rotation-after-secret-write",
            Step::RotationAfterCommit => "rotation-after-commit",
        }
    }
}

/// The environment variable that arms a failpoint.
pub const ENV: &str = "ORGKEEPER_FAILPOINT";

#[derive(Debug, Default)]
pub struct Failpoint {
    armed: Option<(Step, u64)>,
    hits: AtomicU64,
}

impl Failpoint {
    /// Reads `ORGKEEPER_FAILPOINT`; an unknown step is an error rather than a silently disarmed test.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(ENV) {
            Ok(text) if !text.is_empty() => Self::parse(&text),
            _ => Ok(Failpoint::default()),
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, n) = match text.split_once(':') {
            Some((name, n)) => (
                name,
                n.parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{ENV}={text}: the count after ':' must be a positive integer"))?,
            ),
            None => (text, 1),
        };
        let step = Step::ALL.into_iter().find(|s| s.as_str() == name).ok_or_else(|| {
            let known: Vec<&str> = Step::ALL.iter().map(|s| s.as_str()).collect();
            format!("{ENV}={text}: unknown step {name:?}; known steps: {}", known.join(", "))
        })?;
        Ok(Failpoint {
            armed: Some((step, n)),
            hits: AtomicU64::new(0),
        })
    }

    pub fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Aborts the process (no cleanup, like a crash) when `step` is armed and reached for the n-th time.
    pub fn reached(&self, step: Step) {
        if let Some((armed, n)) = self.armed
            && armed == step
            && self.hits.fetch_add(1, Ordering::SeqCst) + 1 == n
        {
            eprintln!("failpoint {}:{n} reached: aborting", step.as_str());
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failpoints_parse_their_step_and_count() {
        let fp = Failpoint::parse("after-secret-create:50").unwrap();
        assert_eq!(fp.armed, Some((Step::AfterSecretCreate, 50)));
        assert_eq!(
            Failpoint::parse("after-live-commit").unwrap().armed,
            Some((Step::AfterLiveCommit, 1))
        );
        let err = Failpoint::parse("after-lunch").unwrap_err();
        assert!(err.contains("after-pending-commit"), "{err}");
        assert!(Failpoint::parse("after-live-commit:0").is_err());
    }

    #[test]
    fn an_unarmed_or_other_failpoint_never_fires() {
        let fp = Failpoint::parse("after-live-commit:2").unwrap();
        fp.reached(Step::AfterPendingCommit);
        fp.reached(Step::AfterLiveCommit); // first of two: no abort
        assert!(!Failpoint::default().is_armed());
        Failpoint::default().reached(Step::AfterSecretCreate);
    }
}
