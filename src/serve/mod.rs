//! The dispatcher process (`bora serve`). Being written.

use tokio_util::sync::CancellationToken;

use crate::config::Settings;

/// # Errors
/// Always, for now.
pub async fn run(_settings: Settings, _shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::bail!("bora serve is not built yet")
}
