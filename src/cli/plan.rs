//! `orgkeeper plan`: what `apply` would change, without changing anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::exit;
use super::output::{self, OutputFormat};
use super::secrets_dir::{Inspection, SecretsDir, Templates};
use crate::domain::{self, Account, KnownAccounts, OrgKey, Plan, Refusal, StoredOrganization};
use crate::manifests::{self, ManifestSet, Resource};
use crate::store::{DEFAULT_DATABASE_URL, Store};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Output format.
    #[arg(short, long, env = "ORGKEEPER_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Also check that this account (github:LOGIN or google:EMAIL, e.g. a pull request's author) may make every
    /// change, judged by its role before the change; exit 3 when it may not.
    #[arg(long = "as", env = "ORGKEEPER_AS", value_name = "ACCOUNT")]
    pub as_account: Option<String>,
    /// Plan against the manifests in this folder (e.g. the pull request's target branch) instead of the store:
    /// no database is opened, and accounts are not checked for existence (the controller does that).
    #[arg(long, env = "ORGKEEPER_BASE", value_name = "DIR")]
    pub base: Option<PathBuf>,
}

/// What the plan is computed against: the store, or the manifests of the target branch.
pub enum StateBefore<'a> {
    Store,
    Manifests(&'a Path),
}

/// The judgement of `plan --as`: every change the account may not make.
pub struct Review {
    pub account: Account,
    pub refusals: Vec<Refusal>,
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
}

/// Everything `plan` and `apply` compute before changing anything.
pub struct Prepared {
    pub manifests: ManifestSet,
    /// `None` when planning against `--base` manifests.
    pub store: Option<Store>,
    /// The state before the plan, for the store's declared organizations (or the base manifests').
    pub before: BTreeMap<OrgKey, StoredOrganization>,
    pub plan: Plan,
    pub review: Option<Review>,
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
    prepare_against(common, StateBefore::Store).await
}

/// Reads the manifests in `dir` and what they declare, printing every error (as `Err(exit code)`).
fn read_declarations(dir: &Path) -> Result<(ManifestSet, domain::Declarations), u8> {
    let manifests = manifests::load_dir(dir).map_err(|errors| output::print_errors(&errors))?;
    let declarations = manifests
        .declarations()
        .map_err(|errors| output::print_errors(&errors))?;
    Ok((manifests, declarations))
}

pub async fn prepare_against(common: &CommonArgs, before: StateBefore<'_>) -> anyhow::Result<Result<Prepared, u8>> {
    let (manifests, declarations) = match read_declarations(&common.manifests) {
        Ok(read) => read,
        Err(code) => return Ok(Err(code)),
    };
    let secrets = SecretsDir::new(&common.secrets_dir);
    let declared_keys: BTreeSet<(String, String)> = declarations
        .api_keys
        .iter()
        .map(|k| (k.namespace.clone(), k.name.clone()))
        .collect();
    let (store, stored, mut plan, inspection) = match before {
        StateBefore::Store => {
            let store = Store::connect(&common.database_url)
                .await
                .context("opening the store")?;
            let keys: Vec<OrgKey> = declarations.organizations.iter().map(|o| o.key()).collect();
            let stored: BTreeMap<OrgKey, StoredOrganization> = store.load_organizations(&keys).await?;
            let accounts = store.known_accounts().await?;
            let plan = domain::plan(&declarations, &stored, &accounts);
            let inspection = secrets.inspect(&plan, &stored, &declared_keys);
            (Some(store), stored, plan, inspection)
        }
        StateBefore::Manifests(base) => {
            let (_, base_declarations) = match read_declarations(base) {
                Ok(read) => read,
                Err(code) => return Ok(Err(code)),
            };
            let stored = domain::state_declared_by(&base_declarations);
            // Whether an account exists is the controller's check; a pull request is judged on authority.
            let accounts: KnownAccounts = declarations.users.iter().map(|u| u.account.clone()).collect();
            let plan = domain::plan(&declarations, &stored, &accounts);
            (None, stored, plan, Inspection::default())
        }
    };
    plan.problems.extend(inspection.conflicts.iter().cloned());
    let objects = declarations.object_count();
    Ok(Ok(Prepared {
        manifests,
        store,
        before: stored,
        plan,
        review: None,
        secrets,
        inspection,
        objects,
    }))
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let account = match args.as_account.as_deref().map(str::parse::<Account>).transpose() {
        Ok(account) => account,
        Err(e) => {
            eprintln!("error: --as: {e}");
            return Ok(exit::ERROR);
        }
    };
    let before = match &args.base {
        Some(base) => StateBefore::Manifests(base),
        None => StateBefore::Store,
    };
    let mut prepared = match prepare_against(&args.common, before).await? {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    if let Some(account) = account {
        let refusals = domain::review(&prepared.plan.changes, &prepared.before, &account);
        prepared.review = Some(Review { account, refusals });
    }
    let code = output::print_plan(&prepared, args.output, false);
    if let Some(store) = prepared.store {
        store.close().await;
    }
    Ok(code)
}
