//! Where a change came from, for the store's audit trail (`orgkeeper keys history`): the Git revision and
//! who applied it.
//!
//! Neither Argo CD nor Flux writes the commit onto the objects it applies. Argo CD marks them with its
//! tracking annotation `argocd.argoproj.io/tracking-id` (`APP:GROUP/KIND:NAMESPACE/NAME`) or, with label
//! tracking, the label `app.kubernetes.io/instance: APP`; Flux's kustomize-controller with the labels
//! `kustomize.toolkit.fluxcd.io/name` and `kustomize.toolkit.fluxcd.io/namespace`. The revision itself lives
//! only in the Application's or Kustomization's status, which can already show a newer commit by the time
//! the controller reconciles, so reading it there would record the wrong one. The revision is therefore read
//! from [`GIT_REVISION_ANNOTATION`], which the tools stamp on every object at render time (Argo CD's
//! `$ARGOCD_APP_REVISION` in `commonAnnotations` with `commonAnnotationsEnvsubst`, Flux's post-build
//! substitution; see docs/argocd.md and docs/flux.md), and the tools' own marks name who applied the change.

use std::collections::BTreeSet;

use kube::ResourceExt;

use super::view::OrgView;
use crate::domain::pause::object_of;
use crate::domain::{Change, KeyState, Kind, ObjectRef, StoredOrganization};
use crate::store::{ApplyOutcome, StoreError, StoreTx};

/// The annotation holding the Git commit a resource was rendered from.
pub const GIT_REVISION_ANNOTATION: &str = "orgkeeper.dev/git-revision";

const ARGOCD_TRACKING_ID: &str = "argocd.argoproj.io/tracking-id";
const ARGOCD_INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
const FLUX_NAME_LABEL: &str = "kustomize.toolkit.fluxcd.io/name";
const FLUX_NAMESPACE_LABEL: &str = "kustomize.toolkit.fluxcd.io/namespace";

/// Who and what a transaction's changes came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provenance {
    /// The controller replica, and the GitOps tool that applied the resources when they say so.
    pub actor: String,
    /// The Git revision of the changed resources (several, comma-separated, when they disagree).
    pub git_revision: Option<String>,
}

/// Carries out `changes` in `tx` in order, each recorded with the provenance of its own resource: one
/// organization's resources can come from several applications or revisions (a resource applied by hand
/// next to the GitOps ones), so runs of changes that share a provenance are applied one after another,
/// each run under its actor and revision, in the same transaction.
pub async fn apply(
    tx: &mut StoreTx,
    view: &OrgView,
    stored: Option<&StoredOrganization>,
    changes: &[Change],
    controller: &str,
) -> Result<ApplyOutcome, StoreError> {
    let mut outcome = ApplyOutcome {
        changes: changes.len(),
        ..Default::default()
    };
    let mut rest = changes;
    while let Some(first) = rest.first() {
        let provenance = of_changes(view, stored, std::slice::from_ref(first), controller);
        let run = 1 + rest[1..]
            .iter()
            .take_while(|c| of_changes(view, stored, std::slice::from_ref(*c), controller) == provenance)
            .count();
        let (batch, tail) = rest.split_at(run);
        tx.set_actor(&provenance.actor);
        tx.set_git_revision(provenance.git_revision);
        outcome.issued.extend(tx.apply(batch, KeyState::Pending).await?.issued);
        rest = tail;
    }
    Ok(outcome)
}

/// The provenance of `changes`, from the annotations and labels of the resources they carry out.
pub fn of_changes(
    view: &OrgView,
    stored: Option<&StoredOrganization>,
    changes: &[Change],
    controller: &str,
) -> Provenance {
    let mut revisions = BTreeSet::new();
    let mut appliers = BTreeSet::new();
    for object in changes.iter().filter_map(|change| object_of(change, stored)) {
        let Some((annotations, labels)) = metadata(view, &object) else {
            continue;
        };
        if let Some(revision) = annotations.get(GIT_REVISION_ANNOTATION).map(|r| r.trim()) {
            // An unexpanded `${ARGOCD_APP_REVISION}` is a setup mistake, not a revision.
            if !revision.is_empty() && !revision.contains('$') {
                revisions.insert(revision.to_owned());
            }
        }
        if let Some(applier) = applied_by(annotations, labels) {
            appliers.insert(applier);
        }
    }
    let join = |set: BTreeSet<String>| (!set.is_empty()).then(|| set.into_iter().collect::<Vec<_>>().join(", "));
    Provenance {
        actor: match join(appliers) {
            Some(applier) => format!("orgkeeper controller {controller} ({applier})"),
            None => format!("orgkeeper controller {controller}"),
        },
        git_revision: join(revisions),
    }
}

type Map = std::collections::BTreeMap<String, String>;

fn metadata<'a>(view: &'a OrgView, object: &ObjectRef) -> Option<(&'a Map, &'a Map)> {
    fn of<K: ResourceExt>(resource: &K) -> (&Map, &Map) {
        (resource.annotations(), resource.labels())
    }
    let named = |name: &str| name == object.name;
    match object.kind {
        Kind::Organization => view.organization.as_deref().map(of),
        Kind::Environment => view
            .environments
            .iter()
            .find(|e| named(&e.name_any()))
            .map(|e| of(e.as_ref())),
        Kind::User => view.users.iter().find(|u| named(&u.name_any())).map(|u| of(u.as_ref())),
        Kind::ApiKey => view.api_key(&object.name).map(|k| of(k.as_ref())),
    }
}

/// The GitOps tool and application that applied a resource, from the marks each tool sets.
fn applied_by(annotations: &Map, labels: &Map) -> Option<String> {
    if let Some(tracking) = annotations.get(ARGOCD_TRACKING_ID) {
        let application = tracking.split_once(':').map_or(tracking.as_str(), |(app, _)| app);
        return Some(format!("applied by Argo CD application {application}"));
    }
    if let (Some(name), Some(namespace)) = (labels.get(FLUX_NAME_LABEL), labels.get(FLUX_NAMESPACE_LABEL)) {
        return Some(format!("applied by Flux Kustomization {namespace}/{name}"));
    }
    labels
        .get(ARGOCD_INSTANCE_LABEL)
        .map(|application| format!("applied by Argo CD application {application}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> Map {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn each_tools_own_marks_name_who_applied_it() {
        let argo = map(&[(ARGOCD_TRACKING_ID, "tenants:orgkeeper.dev/ApiKey:team/backend")]);
        assert_eq!(
            applied_by(&argo, &Map::new()).as_deref(),
            Some("applied by Argo CD application tenants")
        );
        let flux = map(&[(FLUX_NAME_LABEL, "tenants"), (FLUX_NAMESPACE_LABEL, "flux-system")]);
        assert_eq!(
            applied_by(&Map::new(), &flux).as_deref(),
            Some("applied by Flux Kustomization flux-system/tenants")
        );
        let label = map(&[(ARGOCD_INSTANCE_LABEL, "tenants")]);
        assert_eq!(
            applied_by(&Map::new(), &label).as_deref(),
            Some("applied by Argo CD application tenants")
        );
        assert_eq!(applied_by(&Map::new(), &Map::new()), None, "kubectl leaves no mark");
    }
}
