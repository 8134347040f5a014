//! The guest worker (`bora worker`). Being written.

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::ServerId;

/// # Errors
/// Always, for now.
pub async fn run(
    _settings: Settings,
    _server_id: ServerId,
    _shutdown: CancellationToken,
) -> anyhow::Result<()> {
    anyhow::bail!("bora worker is not built yet")
}
