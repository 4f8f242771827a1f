//! Starting the sandbox helper: this same binary re-executed in helper mode with an empty
//! environment, the [`SandboxSpec`] written to its standard input, status events on its
//! standard output and the job's log on its standard error (see `bulwark_sandbox::helper`).
//!
//! Call it from the thread that lives as long as the job (the main thread): the helper's
//! parent-death signal fires when the thread that spawned it exits.

use std::io::Write;
use std::process::{Child, Command, Stdio};

use bulwark_sandbox::spec::SandboxSpec;

/// Spawns the helper and hands it `spec`; `log` is where the job's output goes.
/// On error the helper (if it started) has been killed and reaped.
pub fn spawn(spec: &SandboxSpec, log: Stdio) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the bulwark binary: {e}"))?;
    let json = serde_json::to_vec(spec).map_err(|e| format!("encoding the sandbox spec: {e}"))?;
    let mut child = Command::new(&exe)
        .arg(bulwark_sandbox::helper::HELPER_ARG)
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting the sandbox helper {}: {e}", exe.display()))?;
    // Dropping stdin after the write closes it: the helper reads the spec to its end.
    if let Some(mut stdin) = child.stdin.take() {
        if let Err(e) = stdin.write_all(&json) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("sending the sandbox spec: {e}"));
        }
    }
    Ok(child)
}
