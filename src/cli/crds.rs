//! `orgkeeper crds`: the CRDs as YAML, for `kubectl apply -f -` and for `crds/`.

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<u8> {
    print!("{}", crate::crd::crds_yaml());
    Ok(super::exit::OK)
}
