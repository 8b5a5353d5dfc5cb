//! The policy directory and the endpoints file, watched by polling their modification times.
//! A change reloads both and resolves every endpoint's policy again.
//!
//! Bad input never weakens what is enforced: a problem is logged as `path: doc N: field: message`,
//! and a file that now has problems keeps contributing the policies of its last clean version
//! (a new file's valid documents apply at once). An endpoints file that fails to parse keeps the
//! previous inventory.
//!
//! Only a readable policy directory says which policies apply: when `--policies` is missing,
//! cannot be listed, or is no longer the kind of entry it was (a directory replaced by a file),
//! every policy in force stays in force, and the snapshot carries a [`SourceFault`]. An existing
//! empty directory is a real "no policies".

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::ids::assign_ids;
use super::{BoxFuture, ResolvedEndpoint, Snapshot, Source, SourceFault};
use crate::endpoint::{Endpoint, load_endpoints_file};
use crate::policy::Policy;
use crate::resolved::PolicyRef;

/// (path, modified, length) of every watched file: changes when anything is edited, added or removed.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// The policy directory (or file) and the endpoints file, polled every `interval`.
pub struct FilesSource {
    state: Arc<Mutex<Files>>,
    interval: Duration,
    first: bool,
}

impl FilesSource {
    pub fn new(policies: Option<PathBuf>, endpoints: Option<PathBuf>, interval: Duration) -> Self {
        let files = Files {
            policies,
            endpoints,
            policies_kind: None,
            last_good: HashMap::new(),
            in_force: Vec::new(),
            inventory: Vec::new(),
            fingerprint: None,
            generation: 0,
        };
        FilesSource { state: Arc::new(Mutex::new(files)), interval, first: true }
    }

    /// Reload now if anything changed since the last load (always on the first call).
    pub fn poll(&self) -> Option<Snapshot> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).poll()
    }
}

impl Source for FilesSource {
    fn next(&mut self) -> BoxFuture<'_, Snapshot> {
        Box::pin(async move {
            loop {
                if !std::mem::take(&mut self.first) {
                    tokio::time::sleep(self.interval).await;
                }
                // Loading parses YAML, resolves every endpoint and compiles its DNS rules: off the
                // async workers.
                let state = self.state.clone();
                let polled =
                    tokio::task::spawn_blocking(move || state.lock().unwrap_or_else(PoisonError::into_inner).poll())
                        .await;
                match polled {
                    Ok(Some(snap)) => return snap,
                    Ok(None) => {}
                    Err(e) => tracing::error!(error = %e, "policy reload panicked; policies stay as they were"),
                }
            }
        })
    }
}

/// What the policy path was when it was last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PathKind {
    Dir,
    File,
}

impl PathKind {
    fn name(self) -> &'static str {
        match self {
            PathKind::Dir => "directory",
            PathKind::File => "file",
        }
    }
}

struct Files {
    policies: Option<PathBuf>,
    endpoints: Option<PathBuf>,
    /// The kind of entry the policy path was at its last good read: only the same kind, readable,
    /// replaces what it gave.
    policies_kind: Option<PathKind>,
    last_good: HashMap<PathBuf, Vec<Policy>>,
    /// The policies the last load put in force, in order.
    in_force: Vec<Policy>,
    inventory: Vec<Endpoint>,
    fingerprint: Option<Fingerprint>,
    generation: u64,
}

impl Files {
    fn poll(&mut self) -> Option<Snapshot> {
        let fp = self.fingerprint();
        if self.fingerprint.as_ref() == Some(&fp) {
            return None;
        }
        self.fingerprint = Some(fp);
        Some(self.reload())
    }

    fn fingerprint(&self) -> Fingerprint {
        let mut fp = Vec::new();
        let mut add = |p: &Path| {
            let meta = std::fs::metadata(p).ok();
            fp.push((p.to_path_buf(), meta.as_ref().and_then(|m| m.modified().ok()), meta.map_or(0, |m| m.len())));
        };
        if let Some(dir) = &self.policies {
            add(dir);
            if dir.is_dir()
                && let Ok(rd) = std::fs::read_dir(dir)
            {
                let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                entries.sort();
                entries.iter().for_each(|p| add(p));
            }
        }
        if let Some(file) = &self.endpoints {
            add(file);
        }
        fp
    }

    fn reload(&mut self) -> Snapshot {
        self.generation += 1;
        let mut faults = Vec::new();
        let (policies, rejected) = match self.load_policies() {
            Ok(loaded) => loaded,
            Err(()) => {
                faults.push(SourceFault::PoliciesUnreadable);
                (self.in_force.clone(), 0)
            }
        };
        if let Some(path) = &self.endpoints {
            match load_endpoints_file(path) {
                Ok(eps) => self.inventory = eps,
                Err(e) => {
                    faults.push(SourceFault::EndpointsInvalid);
                    tracing::warn!(
                        error = %e,
                        kept = self.inventory.len(),
                        "endpoints file not loaded; keeping the previous endpoints"
                    )
                }
            }
        }
        let ids = assign_ids(&self.inventory);
        let endpoints: Vec<ResolvedEndpoint> = self
            .inventory
            .iter()
            .zip(ids)
            .map(|(ep, id)| ResolvedEndpoint {
                id,
                endpoint: ep.clone(),
                policy: Arc::new(crate::resolve(&policies, ep, &self.inventory)),
            })
            .collect();
        let refs: Vec<PolicyRef> = policies.iter().map(|p| p.reference.clone()).collect();
        tracing::info!(
            generation = self.generation,
            policies = refs.len(),
            endpoints = endpoints.len(),
            with_dns_rules = endpoints.iter().filter(|e| e.policy.has_dns_rules()).count(),
            "policies loaded"
        );
        Snapshot::new(self.generation, endpoints, refs, rejected).with_faults(faults)
    }

    /// Why the policy path cannot say which policies apply now, if it cannot: it is missing,
    /// unreadable, or no longer the kind of entry it was at the last good read.
    fn unreadable(&self, path: &Path) -> Option<String> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => return Some(e.to_string()),
        };
        let kind = if meta.is_dir() { PathKind::Dir } else { PathKind::File };
        if let Some(was) = self.policies_kind
            && was != kind
        {
            return Some(format!("it was a {} and is now a {}", was.name(), kind.name()));
        }
        if kind == PathKind::Dir
            && let Err(e) = std::fs::read_dir(path)
        {
            return Some(format!("listing it: {e}"));
        }
        None
    }

    /// The policies in force and how many policy problems this load found; `Err` when the policy
    /// path cannot be read (logged here), and what was in force stays.
    fn load_policies(&mut self) -> Result<(Vec<Policy>, usize), ()> {
        let Some(path) = self.policies.clone() else { return Ok((Vec::new(), 0)) };
        let keep = |why: &str, kept: usize| {
            tracing::error!(
                path = %path.display(),
                reason = why,
                kept,
                "policy path unreadable; the policies in force stay in force until it can be read"
            );
        };
        if let Some(why) = self.unreadable(&path) {
            keep(&why, self.in_force.len());
            return Err(());
        }
        let report = crate::load::read_paths(std::slice::from_ref(&path));
        // Listing or reading the path itself failed after all (it changed under us).
        if let Some(p) = report.problems.iter().find(|p| p.path == path && p.doc.is_none()) {
            keep(&p.message, self.in_force.len());
            return Err(());
        }
        self.policies_kind = Some(if path.is_dir() { PathKind::Dir } else { PathKind::File });
        let rejected = report.problems.len();
        for problem in &report.problems {
            tracing::warn!("{problem}");
        }
        for warning in &report.warnings {
            tracing::warn!("{warning} (valid; in force)");
        }
        let troubled: HashSet<&PathBuf> = report.problems.iter().map(|p| &p.path).collect();
        let mut by_file: HashMap<PathBuf, Vec<Policy>> = HashMap::new();
        for p in report.policies {
            by_file.entry(p.source.clone()).or_default().push(p);
        }
        let mut next_good = HashMap::new();
        let mut out = Vec::new();
        for file in &report.files {
            let fresh = by_file.remove(file).unwrap_or_default();
            match self.last_good.remove(file) {
                Some(previous) if troubled.contains(file) => {
                    tracing::warn!(
                        path = %file.display(),
                        policies = previous.len(),
                        "file has problems; its last clean version stays in force"
                    );
                    out.extend(previous.iter().cloned());
                    next_good.insert(file.clone(), previous);
                }
                _ => {
                    out.extend(fresh.iter().cloned());
                    if !troubled.contains(file) {
                        next_good.insert(file.clone(), fresh);
                    }
                }
            }
        }
        self.last_good = next_good;
        // Same-named policies (fresh or kept versions): the last file in lexical order wins, as
        // `kubectl apply -f DIR/` would leave the object.
        let (out, replaced) = crate::load::last_wins(out);
        for warning in &replaced {
            tracing::warn!("{warning}");
        }
        self.in_force = out.clone();
        Ok((out, rejected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::DnsVerdict;

    const GOOD: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: alpine}}
  egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*.microsoft.com"}]}
"#;

    const ENDPOINTS: &str = r#"
- {namespace: kube-system, name: kube-dns, labels: {k8s-app: kube-dns}, ips: [10.96.0.10]}
- {namespace: default, name: alpine, labels: {app: alpine}, ips: [10.0.1.5]}
"#;

    fn verdict(s: &Snapshot, name: &str) -> DnsVerdict {
        let alpine = s.endpoints.iter().find(|e| e.endpoint.name == "alpine").unwrap();
        alpine.policy.dns.verdict("10.96.0.10".parse().unwrap(), 53, fqdn_cache::L4Proto::Udp, name)
    }

    #[test]
    fn broken_edit_keeps_last_clean_version() {
        let dir = tempfile::tempdir().unwrap();
        let pol = dir.path().join("policies");
        std::fs::create_dir(&pol).unwrap();
        let eps = dir.path().join("endpoints.yaml");
        std::fs::write(&eps, ENDPOINTS).unwrap();
        std::fs::write(pol.join("dns.yaml"), GOOD).unwrap();
        let src = FilesSource::new(Some(pol.clone()), Some(eps.clone()), Duration::from_secs(1));
        let s1 = src.poll().expect("first poll loads");
        assert!(matches!(verdict(&s1, "www.microsoft.com."), DnsVerdict::Allowed { .. }));
        assert!(src.poll().is_none(), "nothing changed");

        // Break the file: the old rule stays in force.
        std::fs::write(pol.join("dns.yaml"), GOOD.replace("matchPattern", "matchPatern")).unwrap();
        let s2 = src.poll().expect("change detected");
        assert!(matches!(verdict(&s2, "www.microsoft.com."), DnsVerdict::Allowed { .. }));
        assert!(matches!(verdict(&s2, "www.google.com."), DnsVerdict::Refused { .. }));

        // A broken endpoints file keeps the inventory.
        std::fs::write(&eps, "- {namespace: x, nme: y}\n").unwrap();
        let s3 = src.poll().expect("change detected");
        assert_eq!(s3.endpoints.len(), 2);

        // Removing the file removes its policies.
        std::fs::remove_file(pol.join("dns.yaml")).unwrap();
        let s4 = src.poll().expect("change detected");
        assert_eq!(verdict(&s4, "www.google.com."), DnsVerdict::NotProxied);
        assert!(s4.policies.is_empty());
    }

    fn in_force(s: &Snapshot) -> bool {
        matches!(verdict(s, "www.microsoft.com."), DnsVerdict::Allowed { .. })
            && matches!(verdict(s, "www.google.com."), DnsVerdict::Refused { .. })
            && s.policies.len() == 1
    }

    /// Fault A: only a readable directory says which policies apply. Missing, renamed away,
    /// replaced by a file, or unlistable: the policies in force stay, and the snapshot says why.
    #[test]
    fn an_unreadable_policy_directory_keeps_every_policy() {
        let dir = tempfile::tempdir().unwrap();
        let pol = dir.path().join("policies");
        let eps = dir.path().join("endpoints.yaml");
        std::fs::write(&eps, ENDPOINTS).unwrap();
        let fill = |d: &Path| {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("dns.yaml"), GOOD).unwrap();
        };
        fill(&pol);
        let src = FilesSource::new(Some(pol.clone()), Some(eps.clone()), Duration::from_secs(1));
        let first = src.poll().unwrap();
        assert!(in_force(&first) && first.faults.is_empty());

        type Fault = (&'static str, fn(&Path), fn(&Path));
        let faults: [Fault; 3] = [
            ("removed", |d| std::fs::remove_dir_all(d).unwrap(), |_| {}),
            (
                "renamed away",
                |d| std::fs::rename(d, d.with_extension("old")).unwrap(),
                |d| std::fs::remove_dir_all(d.with_extension("old")).unwrap(),
            ),
            (
                "replaced by a file",
                |d| {
                    std::fs::remove_dir_all(d).unwrap();
                    std::fs::write(d, GOOD.replace("*.microsoft.com", "*")).unwrap();
                },
                |d| std::fs::remove_file(d).unwrap(),
            ),
        ];
        for (what, break_it, clean_up) in faults {
            break_it(&pol);
            let s = src.poll().unwrap_or_else(|| panic!("{what}: change detected"));
            assert!(in_force(&s), "{what}: the last good policies stay: {:?}", s.policies);
            assert_eq!(s.faults, [SourceFault::PoliciesUnreadable], "{what}");
            assert!(src.poll().is_none(), "{what}: nothing changed, nothing reloaded or counted again");
            clean_up(&pol);
            fill(&pol);
            let s = src.poll().unwrap_or_else(|| panic!("{what}: restored"));
            assert!(in_force(&s) && s.faults.is_empty(), "{what}: readable again");
        }

        // An existing directory that cannot be listed (root ignores permissions: a file in its
        // way instead is covered above, so only check when the mode bites).
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&pol, std::fs::Permissions::from_mode(0o000)).unwrap();
        if std::fs::read_dir(&pol).is_err() {
            let s = src.poll().expect("mode change detected");
            assert!(in_force(&s) && s.faults == [SourceFault::PoliciesUnreadable]);
        }
        std::fs::set_permissions(&pol, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _ = src.poll();

        // An existing, empty directory is a real "no policies".
        std::fs::remove_file(pol.join("dns.yaml")).unwrap();
        let s = src.poll().expect("change detected");
        assert!(s.policies.is_empty() && s.faults.is_empty(), "{:?} {:?}", s.policies, s.faults);
        assert_eq!(verdict(&s, "www.google.com."), DnsVerdict::NotProxied);
    }

    /// A policy file given as `--policies` behaves alike: gone or turned into a directory, its
    /// policies stay.
    #[test]
    fn an_unreadable_policy_file_keeps_its_policies() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dns.yaml");
        let eps = dir.path().join("endpoints.yaml");
        std::fs::write(&eps, ENDPOINTS).unwrap();
        std::fs::write(&file, GOOD).unwrap();
        let src = FilesSource::new(Some(file.clone()), Some(eps), Duration::from_secs(1));
        assert!(in_force(&src.poll().unwrap()));
        std::fs::remove_file(&file).unwrap();
        let s = src.poll().unwrap();
        assert!(in_force(&s) && s.faults == [SourceFault::PoliciesUnreadable]);
        std::fs::create_dir(&file).unwrap();
        let s = src.poll().unwrap();
        assert!(in_force(&s) && s.faults == [SourceFault::PoliciesUnreadable], "a directory where the file was");
        std::fs::remove_dir(&file).unwrap();
        std::fs::write(&file, GOOD.replace("*.microsoft.com", "www.google.com")).unwrap();
        let s = src.poll().unwrap();
        assert!(s.faults.is_empty());
        assert!(matches!(verdict(&s, "www.google.com."), DnsVerdict::Allowed { .. }));
    }

    #[test]
    fn a_bad_endpoints_file_is_a_fault_and_keeps_the_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let pol = dir.path().join("policies");
        std::fs::create_dir(&pol).unwrap();
        std::fs::write(pol.join("dns.yaml"), GOOD).unwrap();
        let eps = dir.path().join("endpoints.yaml");
        std::fs::write(&eps, ENDPOINTS).unwrap();
        let src = FilesSource::new(Some(pol), Some(eps.clone()), Duration::from_secs(1));
        assert!(in_force(&src.poll().unwrap()));
        std::fs::remove_file(&eps).unwrap();
        let s = src.poll().unwrap();
        assert!(in_force(&s) && s.endpoints.len() == 2);
        assert_eq!(s.faults, [SourceFault::EndpointsInvalid]);
    }

    /// The seed's four stages share one policy name: a directory holding all of them enforces
    /// the last file in lexical order (stage 4), as `kubectl apply -f seed/` would leave it.
    #[test]
    fn same_named_policies_in_a_directory_the_last_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let pol = dir.path().join("policies");
        std::fs::create_dir(&pol).unwrap();
        let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/policies/seed");
        for e in std::fs::read_dir(&seed).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), pol.join(e.file_name())).unwrap();
        }
        let eps = dir.path().join("endpoints.yaml");
        std::fs::write(&eps, ENDPOINTS).unwrap();
        let src = FilesSource::new(Some(pol.clone()), Some(eps), Duration::from_secs(1));
        let s = src.poll().unwrap();
        assert_eq!(s.policies.len(), 1);
        let alpine = s.endpoints.iter().find(|e| e.endpoint.name == "alpine").unwrap();
        assert_eq!(alpine.policy.fqdn_rules.len(), 1, "stage 4's toFQDNs");
        assert!(matches!(verdict(&s, "www.google.com."), DnsVerdict::Allowed { .. }), "stage 4's rules.dns *");
        // Stage 4 broken: its last clean version still wins over stages 1-3.
        std::fs::write(pol.join("4-allow-fqdn.yaml"), "apiVersion: cilium.io/v2\nkind: [\n").unwrap();
        let s = src.poll().unwrap();
        assert!(matches!(verdict(&s, "www.google.com."), DnsVerdict::Allowed { .. }));
        // Stage 4 removed: stage 3 is the last file now (UDP 53 to kube-dns, not proxied).
        std::fs::remove_file(pol.join("4-allow-fqdn.yaml")).unwrap();
        let s = src.poll().unwrap();
        assert_eq!(verdict(&s, "www.google.com."), DnsVerdict::NotProxied);
        let alpine = s.endpoints.iter().find(|e| e.endpoint.name == "alpine").unwrap();
        assert!(alpine.policy.egress_default_deny && alpine.policy.fqdn_rules.is_empty());
    }

    /// Fault E: an endpoints file giving alpine's IP to another endpoint too would hand alpine's
    /// queries that endpoint's (absent) rules. The file is refused; alpine keeps its rules.
    #[test]
    fn an_ip_listed_for_two_endpoints_keeps_the_last_good_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let pol = dir.path().join("policies");
        std::fs::create_dir(&pol).unwrap();
        std::fs::write(pol.join("dns.yaml"), GOOD).unwrap();
        let eps = dir.path().join("endpoints.yaml");
        std::fs::write(&eps, ENDPOINTS).unwrap();
        let src = FilesSource::new(Some(pol), Some(eps.clone()), Duration::from_secs(1));
        assert!(in_force(&src.poll().unwrap()));
        let alpine_ip = "10.0.1.5".parse().unwrap();
        std::fs::write(&eps, format!("{ENDPOINTS}- {{namespace: default, name: intruder, ips: [10.0.1.5]}}\n"))
            .unwrap();
        let s = src.poll().unwrap();
        assert_eq!(s.faults, [SourceFault::EndpointsInvalid]);
        assert!(in_force(&s), "alpine's rules.dns still apply");
        let owner = s.by_ip(alpine_ip).expect("10.0.1.5 has an owner");
        assert_eq!(owner.endpoint.name, "alpine");
        assert!(owner.policy.has_dns_rules());
        assert_eq!(s.endpoints.len(), 2, "the intruder is not in the inventory");
    }
}
