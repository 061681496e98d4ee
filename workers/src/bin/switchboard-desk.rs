//! `switchboard-desk`: the reference agent desk on the command line
//! (`switchboard_workers::agents::desk_cli`).

use clap::Parser as _;
use switchboard_workers::agents::desk_cli::{Args, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(Args::parse()).await
}
