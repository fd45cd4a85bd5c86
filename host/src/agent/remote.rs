//! Asking the agent (and the guest around it) things over SSH.

use almavmm_shared::health::{self, HealthReport};
use almavmm_shared::paths;

use crate::ssh::client::{SshError, Target};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("the agent in {alias} answered with a report this host cannot read: {source}")]
    Health {
        alias: String,
        #[source]
        source: health::HealthError,
    },
}

/// The instance id in the agent's boot-done marker, if setup has finished.
pub fn boot_done(t: &Target) -> Result<Option<String>, SshError> {
    let out = t.run(&format!("cat {} 2>/dev/null || true", paths::BOOT_DONE))?;
    let id = out.stdout.trim();
    Ok((!id.is_empty()).then(|| id.to_string()))
}

/// `almavmm-agent health --json`, checked for a protocol this host understands.
pub fn health(t: &Target) -> Result<HealthReport, RemoteError> {
    let out = t.run(&format!("sudo -n {} health --json", paths::AGENT_BIN))?;
    health::parse_report(&out.stdout).map_err(|source| RemoteError::Health { alias: t.alias.clone(), source })
}

/// Ask the guest to power off. The connection dropping under us is the expected answer.
pub fn poweroff(t: &Target) -> Result<(), SshError> {
    match t.run("sudo -n systemctl poweroff") {
        Ok(_) => Ok(()),
        Err(SshError::Run(almavmm_shared::runner::RunError::Failed { status, .. })) if status.contains("255") => Ok(()),
        Err(e) => Err(e),
    }
}
