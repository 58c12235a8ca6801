//! `orgkeeper plan`: what `apply` would change, without changing anything.

use super::output::{self, OutputFormat};
use super::prepared::{CommonArgs, prepare};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Output format.
    #[arg(short, long, env = "ORGKEEPER_OUTPUT", value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

pub async fn run(args: Args) -> anyhow::Result<u8> {
    let prepared = match prepare(&args.common).await? {
        Ok(p) => p,
        Err(errors) => return Ok(output::print_errors(&errors)),
    };
    let code = output::print_plan(&prepared, args.output, false);
    prepared.store.close().await;
    Ok(code)
}
