//! The last snapshot's inputs in the state directory, so an agent that starts while the API
//! server is unreachable enforces what it last saw instead of nothing. The file holds the raw
//! policy objects in force (re-validated on restore, through the same checks) and the pods,
//! namespaces and node as [`Records`]. Written atomically (a temporary file renamed over it),
//! mode 0600: it lists every pod of the cluster. It is written just after each snapshot is
//! handed out (by a task of its own, the latest state only), so an agent killed within that
//! write starts from the state before: older, but one that was enforced.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::records::Records;

/// The file's name in the state directory.
pub const STATE_FILE: &str = "kubernetes-state.json";
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Saved {
    format: u32,
    node_name: String,
    #[serde(flatten)]
    records: Records,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(STATE_FILE)
}

/// Write `records`, as seen by the agent of `node_name`.
pub fn save(state_dir: &Path, node_name: &str, records: &Records) -> std::io::Result<()> {
    let file = path(state_dir);
    let tmp = state_dir.join(format!(".{STATE_FILE}.tmp"));
    let saved = Saved { format: FORMAT, node_name: node_name.to_string(), records: records.clone() };
    let bytes = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &file)
}

/// What a previous run saved, if anything usable: `None` when there is no file; an error
/// (logged by the caller) when it is unreadable, of another format, or of another node.
pub fn load(state_dir: &Path, node_name: &str) -> Result<Option<Records>, String> {
    let file = path(state_dir);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    if saved.format != FORMAT {
        return Err(format!("{}: format {} is not {FORMAT}", file.display(), saved.format));
    }
    if saved.node_name != node_name {
        return Err(format!("{}: saved by the agent of node {:?}, not {node_name:?}", file.display(), saved.node_name));
    }
    Ok(Some(saved.records))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::source::kubernetes::records::{NamespaceRecord, PodRecord};

    #[test]
    fn round_trip_private_and_node_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), "n1"), Ok(None));
        let records = Records {
            node: None,
            namespaces: vec![NamespaceRecord { name: "default".into(), labels: Default::default() }],
            pods: vec![PodRecord {
                namespace: "default".into(),
                name: "a".into(),
                labels: Default::default(),
                node: Some("n1".into()),
                host_network: false,
                ips: vec!["10.0.0.1".parse().unwrap()],
                phase: None,
                service_account: None,
                policy_audit_mode: true,
            }],
            policies: vec![],
        };
        save(dir.path(), "n1", &records).unwrap();
        let mode = std::fs::metadata(path(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(dir.path(), "n1"), Ok(Some(records)));
        let other = load(dir.path(), "n2").unwrap_err();
        assert!(other.contains("not \"n2\""), "{other}");
        std::fs::write(path(dir.path()), "{").unwrap();
        assert!(load(dir.path(), "n1").is_err());
    }
}
