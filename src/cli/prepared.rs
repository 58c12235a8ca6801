//! What `plan` and `apply` compute before changing anything: the manifests read and checked, the store
//! opened, the plan, and what the secrets folder says about it. Shared by both commands and by the output
//! that shows it; this module prints nothing, so every arrow points away from it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::secrets_dir::{Inspection, SecretShape, SecretsDir, Templates};
use crate::domain::{self, Account, Declarations, KnownAccounts, OrgKey, Plan, Refusal, StoredOrganization};
use crate::identity::DeclaredSource;
use crate::manifests::{self, LoadLimits, ManifestError, ManifestSet, Resource};
use crate::store::{DEFAULT_DATABASE_URL, Store};

/// Flags shared by `plan` and `apply`.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// Folder (or file) of manifests: every *.yaml/*.yml below it, multi-document; other kinds are skipped.
    #[arg(short = 'f', long = "filename", env = "ORGKEEPER_MANIFESTS", value_name = "DIR")]
    pub manifests: PathBuf,
    /// The store: sqlite://PATH (created if missing), sqlite::memory:, or postgres://USER:PASSWORD@HOST/DB.
    #[arg(long, env = "ORGKEEPER_DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Folder for issued keys: one Secret manifest per key at DIR/NAMESPACE/SECRET.yaml, mode 0600.
    #[arg(
        long,
        env = "ORGKEEPER_SECRETS_DIR",
        default_value = "orgkeeper-secrets",
        value_name = "DIR"
    )]
    pub secrets_dir: PathBuf,
    /// The most bytes one manifest file may hold (a larger file is an error, not read whole).
    #[arg(long, env = "ORGKEEPER_MAX_FILE_BYTES", value_name = "BYTES", default_value_t = LoadLimits::DEFAULT_MAX_FILE_BYTES)]
    pub max_file_bytes: u64,
    /// The most bytes all manifest files together may hold.
    #[arg(long, env = "ORGKEEPER_MAX_TOTAL_BYTES", value_name = "BYTES", default_value_t = LoadLimits::DEFAULT_MAX_TOTAL_BYTES)]
    pub max_total_bytes: u64,
    #[command(flatten)]
    pub accounts: super::identity::AccountArgs,
}

impl CommonArgs {
    pub fn load_limits(&self) -> LoadLimits {
        LoadLimits {
            max_file_bytes: self.max_file_bytes,
            max_total_bytes: self.max_total_bytes,
        }
    }
}

/// What the plan is computed against: the store, or the manifests of the target branch (`plan --base`).
pub enum StateBefore<'a> {
    Store,
    Manifests(&'a Path),
}

/// The judgement of `plan --as`: every change the account may not make.
pub struct Review {
    pub account: Account,
    pub refusals: Vec<Refusal>,
}

/// Everything `plan` and `apply` compute before changing anything.
pub struct Prepared {
    pub manifests: ManifestSet,
    /// `None` when planning against `--base` manifests: no database is opened.
    pub store: Option<Store>,
    /// What the store holds for the declared organizations (or the base manifests declare), before the plan.
    pub stored: BTreeMap<OrgKey, StoredOrganization>,
    pub plan: Plan,
    /// Set by `plan --as`.
    pub review: Option<Review>,
    pub secrets: SecretsDir,
    pub inspection: Inspection,
    pub objects: usize,
}

impl Prepared {
    /// What each ApiKey asks of its Secret: labels, annotations, and whether it rotates.
    pub fn templates(&self) -> Templates {
        self.manifests
            .manifests
            .iter()
            .filter_map(|m| match &m.resource {
                Resource::ApiKey(key) => {
                    let template = key
                        .spec
                        .secret
                        .as_ref()
                        .and_then(|s| s.template.clone())
                        .unwrap_or_default();
                    let object = m.resource.object_ref();
                    Some((
                        (object.namespace, object.name),
                        SecretShape {
                            labels: template.labels,
                            annotations: template.annotations,
                            rotates: key.spec.rotation.is_some(),
                        },
                    ))
                }
                _ => None,
            })
            .collect()
    }
}

/// Reads and validates the manifests, opens the store, and plans. Errors in the manifests (all of them)
/// come back as `Ok(Err(errors))`, for the caller to show.
pub async fn prepare(common: &CommonArgs) -> anyhow::Result<Result<Prepared, Vec<ManifestError>>> {
    prepare_against(common, StateBefore::Store).await
}

fn read_declarations(dir: &Path, common: &CommonArgs) -> Result<(ManifestSet, Declarations), Vec<ManifestError>> {
    let manifests = manifests::load_dir_with(dir, common.load_limits())?;
    let declarations = manifests.declarations()?;
    Ok((manifests, declarations))
}

/// [`prepare`], with the state before the plan taken from the store or from a folder of manifests.
pub async fn prepare_against(
    common: &CommonArgs,
    before: StateBefore<'_>,
) -> anyhow::Result<Result<Prepared, Vec<ManifestError>>> {
    let (manifests, declarations) = match read_declarations(&common.manifests, common) {
        Ok(read) => read,
        Err(errors) => return Ok(Err(errors)),
    };
    let secrets = SecretsDir::new(&common.secrets_dir);
    let (store, stored, mut plan, inspection) = match before {
        StateBefore::Store => {
            let store = Store::connect(&common.database_url)
                .await
                .context("opening the store")?;
            let keys: Vec<OrgKey> = declarations.organizations.iter().map(|o| o.key()).collect();
            let stored: BTreeMap<OrgKey, StoredOrganization> = store.load_organizations(&keys).await?;
            let declared = match crate::identity::declared::load_dir(&common.manifests, common.load_limits()) {
                Ok(declared) => declared,
                Err(errors) => return Ok(Err(errors)),
            };
            let directory = common.accounts.directory(DeclaredSource::fixed(declared))?;
            let accounts = directory
                .resolve(declarations.users.iter().map(|u| &u.account), &store)
                .await?;
            let mut plan = domain::plan(&declarations, &stored, &accounts);
            let inspection = secrets.inspect(&mut plan, &stored);
            (Some(store), stored, plan, inspection)
        }
        StateBefore::Manifests(base) => {
            let (_, base_declarations) = match read_declarations(base, common) {
                Ok(read) => read,
                Err(errors) => return Ok(Err(errors)),
            };
            let stored = domain::state_declared_by(&base_declarations);
            // Whether an account exists is the controller's check; a pull request is judged on authority.
            let accounts: KnownAccounts = declarations.users.iter().map(|u| u.account.clone()).collect();
            let plan = domain::plan(&declarations, &stored, &accounts);
            (None, stored, plan, Inspection::default())
        }
    };
    plan.problems.extend(inspection.conflicts.iter().cloned());
    plan.problems.sort_by(|a, b| a.object.cmp(&b.object));
    let objects = declarations.object_count();
    Ok(Ok(Prepared {
        manifests,
        store,
        stored,
        plan,
        review: None,
        secrets,
        inspection,
        objects,
    }))
}
