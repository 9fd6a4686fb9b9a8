//! `imds-observer tui`: live investigation.
use anyhow::Result;

use crate::cli::TuiArgs;

pub async fn main(_args: TuiArgs) -> Result<()> {
    anyhow::bail!("the TUI is not built yet")
}
