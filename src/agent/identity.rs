//! The agent's stable identity: a UUID kept in the state directory, so the
//! control plane recognises a reconnecting or restarted agent as the same one.

use connectivity_common::fs::create_private_dir;
use std::path::Path;

/// Read `<state_dir>/agent-id`, creating it (and the directory) on first start.
pub fn load_or_create(state_dir: &Path) -> Result<String, String> {
    let path = state_dir.join("agent-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if uuid::Uuid::parse_str(s.trim()).is_ok() => return Ok(s.trim().to_owned()),
        Ok(_) => {
            return Err(format!(
                "{} does not hold an agent id; delete it to let the agent create a new identity",
                path.display()
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    create_private_dir(state_dir)
        .map_err(|e| format!("cannot create the state directory {}: {e}; set agent_STATE_DIR to a writable directory", state_dir.display()))?;
    let id = uuid::Uuid::new_v4().to_string();
    let tmp = state_dir.join(".agent-id.tmp");
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| {
            format!(
                "cannot write {}: {e}; set agent_STATE_DIR to a writable directory",
                path.display()
            )
        })?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    #[test]
    fn id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let a = super::load_or_create(&state).unwrap();
        let b = super::load_or_create(&state).unwrap();
        assert_eq!(a, b);
        std::fs::write(state.join("agent-id"), "garbage").unwrap();
        let err = super::load_or_create(&state).unwrap_err();
        assert!(
            err.ends_with(
                "does not hold an agent id; delete it to let the agent create a new identity"
            ),
            "{err}"
        );
    }
}
