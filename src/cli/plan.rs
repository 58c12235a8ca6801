//! `orgkeeper plan`: what `apply` would change, without changing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::Context;

use super::output::{self, OutputFormat};
use super::secrets_dir::{Inspection, SecretsDir, Templates};
use crate::domain::{self, OrgKey, Plan, StoredOrganization};
use crate::identity::DeclaredSource;
use crate::manifests::{self, ManifestSet, Resource};
use crate::store::{DEFAULT_DATABASE_URL, Store};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Output format.
    #[arg(short, long, env = "ORGKEEPER_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// Flags shared by `plan` and `apply`.
#[derive(Debug, clap::Args)]
pub struct CommonArgs {
    /// Folder (or file) of manifests: every *.yaml/*.yml below it, multi-document; other kinds are skipped.
    #[arg(short = 'f', long = "filename", env = "ORGKEEPER_MANIFESTS", value_name = "DIR")]
    pub manifests: PathBuf,
    /// The store: sqlite:PATH (created if missing), sqlite::memory:, or postgres://USER:PASSWORD@HOST/DB.
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
    #[command(flatten)]
    pub accounts: super::identity::AccountArgs,
}

/// Everything `plan` and `apply` compute before changing anything.
pub struct Prepared {
    pub manifests: ManifestSet,
    pub store: Store,
    pub plan: Plan,
    pub secrets: SecretsDir,
    pub inspection: Inspection,
    pub objects: usize,
}

impl Prepared {
    /// The labels and annotations each ApiKey asks for on its Secret.
    pub fn templates(&self) -> Templates {
        self.manifests
            .manifests
            .iter()
            .filter_map(|m| match &m.resource {
                Resource::ApiKey(key) => {
                    let template = key.spec.secret.as_ref()?.template.as_ref()?;
                    let object = m.resource.object_ref();
                    Some((
                        (object.namespace, object.name),
                        (template.labels.clone(), template.annotations.clone()),
                    ))
                }
                _ => None,
            })
            .collect()
    }
}

/// Reads and validates the manifests, opens the store, and plans. Errors in the manifests are printed
/// (all of them) and reported as `Ok(Err(exit code))`.
pub async fn prepare(common: &CommonArgs) -> anyhow::Result<Result<Prepared, u8>> {
    let manifests = match manifests::load_dir(&common.manifests) {
        Ok(set) => set,
        Err(errors) => return Ok(Err(output::print_errors(&errors))),
    };
    let declarations = match manifests.declarations() {
        Ok(d) => d,
        Err(errors) => return Ok(Err(output::print_errors(&errors))),
    };
    let store = Store::connect(&common.database_url)
        .await
        .context("opening the store")?;
    let keys: Vec<OrgKey> = declarations.organizations.iter().map(|o| o.key()).collect();
    let stored: BTreeMap<OrgKey, StoredOrganization> = store.load_organizations(&keys).await?;
    let declared = match crate::identity::declared::load_dir(&common.manifests) {
        Ok(declared) => declared,
        Err(errors) => return Ok(Err(output::print_errors(&errors))),
    };
    let directory = common.accounts.directory(DeclaredSource::fixed(declared))?;
    let accounts = directory
        .resolve(declarations.users.iter().map(|u| &u.account), &store)
        .await?;
    let mut plan = domain::plan(&declarations, &stored, &accounts);
    let secrets = SecretsDir::new(&common.secrets_dir);
    let declared_keys: BTreeSet<(String, String)> = declarations
        .api_keys
        .iter()
        .map(|k| (k.namespace.clone(), k.name.clone()))
        .collect();
    let inspection = secrets.inspect(&plan, &stored, &declared_keys);
    plan.problems.extend(inspection.conflicts.iter().cloned());
    let objects = declarations.object_count();
    Ok(Ok(Prepared {
        manifests,
        store,
        plan,
        secrets,
        inspection,
        objects,
    }))
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let prepared = match prepare(&args.common).await? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let code = output::print_plan(&prepared, args.output, false);
    prepared.store.close().await;
    Ok(code)
}
