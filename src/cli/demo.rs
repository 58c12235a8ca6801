//! `orgkeeper demo`: the whole system on one machine in one command, on the embedded SQLite store. It
//! registers the accounts the example Users reference (in production, accounts exist because people signed
//! up), applies the folder, plans again to show that a second run changes nothing, then serves the fact
//! store and the sidecar on loopback until Ctrl-C, and prints what a client needs: the sidecar's URL and
//! where the issued keys are.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;

use super::output::OutputFormat;
use super::prepared::CommonArgs;
use super::{apply, exit, facts, plan, sidecar};
use crate::crd::secret::{LABEL_API_KEY, LABEL_ENVIRONMENT, LABEL_ORGANIZATION};
use crate::manifests::{self, LoadLimits, Resource};
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folder of manifests to reconcile.
    #[arg(
        short = 'f',
        long = "filename",
        env = "ORGKEEPER_MANIFESTS",
        default_value = "examples",
        value_name = "DIR"
    )]
    pub manifests: PathBuf,
    /// The store (a SQLite file by default, so the demo leaves your real store alone).
    #[arg(
        long,
        env = "ORGKEEPER_DATABASE_URL",
        default_value = "sqlite://orgkeeper-demo.db",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Folder for issued keys (Secret manifests, mode 0600).
    #[arg(
        long,
        env = "ORGKEEPER_SECRETS_DIR",
        default_value = "orgkeeper-secrets",
        value_name = "DIR"
    )]
    pub secrets_dir: PathBuf,
    /// Where the sidecar listens (clients talk to it).
    #[arg(long, env = "ORGKEEPER_SIDECAR_LISTEN", default_value = "127.0.0.1:8080")]
    pub sidecar_listen: SocketAddr,
    /// Where the fact store listens (the sidecar's upstream).
    #[arg(long, env = "ORGKEEPER_FACTS_LISTEN", default_value = "127.0.0.1:8081")]
    pub facts_listen: SocketAddr,
    /// The URL written as OSO_URL next to each key (default: the sidecar's address).
    #[arg(long, env = "ORGKEEPER_OSO_URL")]
    pub oso_url: Option<String>,
    /// Only reconcile; do not start the fact store and the sidecar.
    #[arg(long, env = "ORGKEEPER_NO_SERVE")]
    pub no_serve: bool,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let code = reconcile(&args).await?;
    if code != exit::OK || args.no_serve {
        return Ok(code);
    }
    serve(&args).await
}

async fn reconcile(args: &Args) -> anyhow::Result<u8> {
    let set = match manifests::load_dir(&args.manifests) {
        Ok(set) => set,
        Err(errors) => return Ok(super::output::print_errors(&errors)),
    };
    let accounts: Vec<_> = set
        .manifests
        .iter()
        .filter_map(|m| match &m.resource {
            Resource::User(user) => user.account().ok(),
            _ => None,
        })
        .collect();
    let store = Store::connect(&args.database_url).await.context("opening the store")?;
    let added = store.add_accounts(&accounts).await?;
    store.close().await;
    println!(
        "== Registered {added} example account(s) ({} referenced by Users)",
        accounts.len()
    );

    let common = || CommonArgs {
        manifests: args.manifests.clone(),
        database_url: args.database_url.clone(),
        secrets_dir: args.secrets_dir.clone(),
        accounts: super::identity::AccountArgs::off(),
        max_file_bytes: LoadLimits::DEFAULT_MAX_FILE_BYTES,
        max_total_bytes: LoadLimits::DEFAULT_MAX_TOTAL_BYTES,
    };
    println!("== orgkeeper apply -f {}", args.manifests.display());
    let oso_url = args
        .oso_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", args.sidecar_listen));
    let code = apply::run(apply::Args {
        common: common(),
        oso_url,
        allow_revocations: apply::DEFAULT_ALLOWED_REVOCATIONS,
        output: OutputFormat::Text,
    })
    .await?;
    if code != exit::OK {
        return Ok(code);
    }
    println!(
        "== orgkeeper plan -f {} (a second run changes nothing)",
        args.manifests.display()
    );
    plan::run(plan::Args {
        common: common(),
        output: OutputFormat::Text,
        as_account: None,
        base: None,
    })
    .await
}

/// Runs the fact store and the sidecar in this process until Ctrl-C (each stops on the signal).
async fn serve(args: &Args) -> anyhow::Result<u8> {
    let metrics = |addr: SocketAddr, port_offset: u16| SocketAddr::new(addr.ip(), 9000 + port_offset);
    let facts = tokio::spawn(facts::run(facts::Args {
        listen: args.facts_listen,
        database_url: args.database_url.clone(),
        metrics_addr: metrics(args.facts_listen, 92),
        max_body_bytes: crate::facts::DEFAULT_MAX_BODY_BYTES,
        body_timeout: crate::facts::DEFAULT_BODY_TIMEOUT,
        refresh_interval: Duration::from_secs(1),
        store_timeout: crate::facts::DEFAULT_STORE_TIMEOUT,
    }));
    let sidecar = tokio::spawn(sidecar::run(sidecar::Args {
        listen: args.sidecar_listen,
        upstream: format!("http://{}", args.facts_listen),
        database_url: args.database_url.clone(),
        metrics_addr: metrics(args.sidecar_listen, 91),
        ..sidecar::Args::from_defaults()?
    }));
    for addr in [args.facts_listen, args.sidecar_listen] {
        wait_listening(addr)
            .await
            .with_context(|| format!("nothing is listening on {addr}"))?;
    }
    print_banner(args);
    let (facts, sidecar) = tokio::join!(facts, sidecar);
    let facts = facts.context("the fact store stopped unexpectedly")??;
    let sidecar = sidecar.context("the sidecar stopped unexpectedly")??;
    Ok(facts.max(sidecar))
}

async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("timed out after 30 s")
}

fn print_banner(args: &Args) {
    let url = format!("http://{}", args.sidecar_listen);
    println!("== Serving on loopback:");
    println!("   sidecar     {url}   (clients talk to it: it checks keys and limits)");
    println!("   fact store  http://{}   (the sidecar's upstream)", args.facts_listen);
    println!("== Keys (one Kubernetes Secret manifest each, data OSO_AUTH and OSO_URL):");
    let keys = issued_keys(&args.secrets_dir);
    for (path, describe) in &keys {
        println!("   {}  {describe}", path.display());
    }
    if let Some((path, _)) = keys
        .iter()
        .find(|(p, _)| p.ends_with("backend-oso.yaml"))
        .or(keys.first())
    {
        println!("== Try the official Python client (oso-cloud on PyPI):");
        println!("   python3 -m venv /tmp/oso && /tmp/oso/bin/pip install -q oso-cloud==2.6.0");
        println!("   export OSO_URL={url}");
        println!(
            "   export OSO_AUTH=$(awk '/OSO_AUTH:/ {{print $2}}' {} | base64 -d)",
            path.display()
        );
        println!(
            "   /tmp/oso/bin/python -c 'import os; from oso_cloud import Oso, Value; oso = Oso(url=os.environ[\"OSO_URL\"], api_key=os.environ[\"OSO_AUTH\"]); oso.insert((\"has_role\", Value(\"User\", \"alice\"), \"admin\", Value(\"Organization\", \"acme\"))); print(oso.get((\"has_role\",)))'"
        );
    }
    println!("== Ctrl-C to stop.");
}

/// The Secret files below `dir`, each with "api key X, environment Y of organization Z".
fn issued_keys(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let Ok(namespaces) = std::fs::read_dir(dir) else {
        return found;
    };
    for namespace in namespaces.flatten() {
        let Ok(files) = std::fs::read_dir(namespace.path()) else {
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            let Some(secret) = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_norway::from_str::<Secret>(&t).ok())
            else {
                continue;
            };
            let labels = secret.metadata.labels.unwrap_or_default();
            let label = |name: &str| labels.get(name).cloned().unwrap_or_default();
            let describe = format!(
                "api key {}, environment {} of organization {}",
                label(LABEL_API_KEY),
                label(LABEL_ENVIRONMENT),
                label(LABEL_ORGANIZATION)
            );
            found.push((path, describe));
        }
    }
    found.sort();
    found
}
