//! A real Kubernetes control plane for tests: etcd and kube-apiserver 1.20.2 on loopback ports of
//! their own, with Debian's kubectl 1.20 to talk to them. No kubelet, scheduler or controllers:
//! Pods, Nodes and Namespaces are plain API objects the test writes, Pod IPs included (through the
//! status subresource, as a kubelet would).
//!
//! The server and kubectl are built and cached once by `scripts/kube-apiserver`; etcd is Debian's
//! `etcd-server`. [`available`] gates a test on them the way `privileged::available` does.
//!
//! Self-contained (std, anyhow, serde_json, tempfile, libc) so it can move into a shared test
//! support crate as it is.

use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The Kubernetes version scripts/kube-apiserver builds.
pub const VERSION: &str = "1.20.2";

/// The ServiceAccount the agent runs as (deploy/rbac.yaml); [`KubeApiserver::kubectl_as_agent`]
/// authenticates as its user, so RBAC bindings to the ServiceAccount apply.
pub const AGENT_USER: &str = "system:serviceaccount:kube-system:fqdnd";

/// How long a fresh server may take to pass /readyz. It takes 3-7 s here; the bound only turns a
/// hang into an error carrying the server's log.
const READY_DEADLINE: Duration = Duration::from_secs(90);

/// Paths of the programs the control plane runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub apiserver: PathBuf,
    pub kubectl: PathBuf,
    pub etcd: PathBuf,
    pub openssl: PathBuf,
}

/// Where scripts/kube-apiserver caches its output.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("FQDND_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/cache/fqdnd"));
    base.join(format!("kubernetes-{VERSION}"))
}

/// The control plane's programs, or what is missing and how to get it.
pub fn binaries() -> std::result::Result<Binaries, String> {
    let cache = cache_dir();
    let apiserver = cache.join("kube-apiserver");
    let kubectl = cache.join("kubectl");
    let mut missing = Vec::new();
    if !is_executable(&apiserver) || !is_executable(&kubectl) {
        missing.push(format!(
            "{} and {} (run scripts/kube-apiserver as root: it builds and caches them, a few minutes once)",
            apiserver.display(),
            kubectl.display()
        ));
    }
    let etcd = which("etcd");
    if etcd.is_none() {
        missing.push("etcd (Debian: apt-get install etcd-server)".to_string());
    }
    let openssl = which("openssl");
    if openssl.is_none() {
        missing.push("openssl (Debian: apt-get install openssl)".to_string());
    }
    match (etcd, openssl) {
        (Some(etcd), Some(openssl)) if missing.is_empty() => Ok(Binaries { apiserver, kubectl, etcd, openssl }),
        _ => Err(format!("needs {}", missing.join(", "))),
    }
}

/// True when the test may run. Call first thing: `if !kube::available("name") { return; }`.
/// Skips with a printed reason when a program is missing, unless FQDND_REQUIRE_PRIVILEGED=1 (CI),
/// where a skip would hide a failure and panics instead.
pub fn available(test: &str) -> bool {
    match binaries() {
        Ok(_) => true,
        Err(reason) if std::env::var("FQDND_REQUIRE_PRIVILEGED").as_deref() == Ok("1") => {
            panic!("{test}: {reason}, and FQDND_REQUIRE_PRIVILEGED=1 forbids skipping")
        }
        Err(reason) => {
            eprintln!("{test}: SKIPPED: {reason}");
            false
        }
    }
}

/// etcd + kube-apiserver, both killed and their files removed on drop. On a panicking thread the
/// drop prints the tails of both logs first, so a failing test shows what the server said.
pub struct KubeApiserver {
    bins: Binaries,
    dir: tempfile::TempDir,
    etcd: Child,
    apiserver: Option<Child>,
    port: u16,
    etcd_url: String,
    admin_token: String,
    agent_token: String,
}

impl KubeApiserver {
    /// Start etcd and the API server on free loopback ports and wait until /readyz passes.
    pub fn start() -> Result<Self> {
        let bins = binaries().map_err(anyhow::Error::msg)?;
        // A free port can be taken by another test between our probe and the server's bind; such
        // a start fails early with "address already in use" and is retried on new ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(bins.clone()) {
                Ok(server) => return Ok(server),
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn start_once(bins: Binaries) -> Result<Self> {
        let dir =
            tempfile::Builder::new().prefix("fqdnd-kube-").tempdir().context("creating the control plane's dir")?;
        let (etcd_port, peer_port, port) = (free_port()?, free_port()?, free_port()?);
        let admin_token = random_token()?;
        let agent_token = random_token()?;

        make_pki(&bins.openssl, dir.path())?;
        // token,user,uid,"groups": the agent's user carries the groups a real ServiceAccount token
        // would, so bindings to system:serviceaccounts* apply as in a cluster.
        fs::write(
            dir.path().join("tokens.csv"),
            format!(
                "{admin_token},fqdnd-test-admin,fqdnd-test-admin,\"system:masters\"\n\
                 {agent_token},{AGENT_USER},fqdnd-test-agent,\"system:serviceaccounts,system:serviceaccounts:kube-system\"\n"
            ),
        )?;

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = Command::new(&bins.etcd)
            .arg("--name=default")
            .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log_file(dir.path(), "etcd.log")?)
            .stderr(log_file(dir.path(), "etcd.log")?)
            .spawn()
            .with_context(|| format!("starting {}", bins.etcd.display()))?;

        let mut server = KubeApiserver { bins, dir, etcd, apiserver: None, port, etcd_url, admin_token, agent_token };
        server.write_kubeconfig("admin.kubeconfig", "fqdnd-test-admin", &server.admin_token)?;
        server.write_kubeconfig("agent.kubeconfig", "fqdnd-agent", &server.agent_token)?;
        server.start_apiserver()?;
        Ok(server)
    }

    /// (Re)start the API server on the same etcd, port, certificates and tokens, and wait until
    /// /readyz passes. Objects written before a [`Self::stop_apiserver`] are still there.
    pub fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            bail!("the API server is already running");
        }
        let d = self.dir.path();
        let path = |f: &str| d.join(f).display().to_string();
        let mut cmd = Command::new(&self.bins.apiserver);
        cmd.arg(format!("--etcd-servers={}", self.etcd_url))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.port))
            // 1.20 still opens an unauthenticated port 8080 unless told not to; parallel servers
            // would fight over it.
            .arg("--insecure-port=0")
            .arg(format!("--tls-cert-file={}", path("server.crt")))
            .arg(format!("--tls-private-key-file={}", path("server.key")))
            .arg(format!("--token-auth-file={}", path("tokens.csv")))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-key-file={}", path("sa.key")))
            .arg(format!("--service-account-signing-key-file={}", path("sa.key")))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--service-cluster-ip-range=10.96.0.0/12")
            // No controller manager creates ServiceAccounts or their tokens; the admission plugin
            // would refuse every pod for the missing "default" account.
            .arg("--disable-admission-plugins=ServiceAccount")
            // Nothing else may write the kubernetes Service's endpoints (127.0.0.1 would be
            // refused as an endpoint address anyway).
            .arg("--endpoint-reconciler-type=none")
            // What real clusters allow, and what deploy/daemonset.yaml's bpffs init container needs.
            .arg("--allow-privileged=true")
            .arg("--profiling=false")
            .stdin(Stdio::null())
            .stdout(log_file(d, "apiserver.log")?)
            .stderr(log_file(d, "apiserver.log")?);
        let child = cmd.spawn().with_context(|| format!("starting {}", self.bins.apiserver.display()))?;
        self.apiserver = Some(child);
        self.wait_ready()
    }

    /// Kill the API server (SIGKILL: an outage as clients see a crash or a lost node, connections
    /// reset) and reap it. etcd keeps running; [`Self::start_apiserver`] brings the server back.
    pub fn stop_apiserver(&mut self) -> Result<()> {
        let Some(mut child) = self.apiserver.take() else { bail!("the API server is not running") };
        child.kill().context("killing kube-apiserver")?;
        child.wait().context("reaping kube-apiserver")?;
        Ok(())
    }

    /// [`Self::stop_apiserver`] then [`Self::start_apiserver`].
    pub fn restart_apiserver(&mut self) -> Result<()> {
        self.stop_apiserver()?;
        self.start_apiserver()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let deadline = started + READY_DEADLINE;
        loop {
            if let Some(status) = self.apiserver.as_mut().and_then(|c| c.try_wait().transpose()) {
                let status = status.context("waiting for kube-apiserver")?;
                self.apiserver = None;
                bail!(
                    "kube-apiserver exited during start ({status}); its log ends with:\n{}",
                    self.apiserver_log_tail(40)
                );
            }
            if let Some(status) = self.etcd.try_wait().context("waiting for etcd")? {
                bail!("etcd exited during start ({status}); its log ends with:\n{}", self.etcd_log_tail(40));
            }
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                // Shown with a failing test's output: a slow start explains a slow test.
                eprintln!("kube-apiserver on port {} ready after {:.1?}", self.port, started.elapsed());
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver on port {} not ready after {READY_DEADLINE:?} (last /readyz: {}); its log ends with:\n{}",
                    self.port,
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.apiserver_log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA that signed the server's certificate (both kubeconfigs name it).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A kubeconfig for a cluster admin (group system:masters).
    pub fn kubeconfig_admin(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// A kubeconfig for the agent's ServiceAccount user ([`AGENT_USER`]): it may do what
    /// deploy/rbac.yaml grants once that is applied, nothing more.
    pub fn kubeconfig_agent(&self) -> PathBuf {
        self.dir.path().join("agent.kubeconfig")
    }

    /// The control plane's own directory (logs, certificates, kubeconfigs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cached kubectl 1.20 as the admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(&self.kubeconfig_admin(), args, None)
    }

    /// The cached kubectl 1.20 as the agent's ServiceAccount.
    pub fn kubectl_as_agent(&self, args: &[&str]) -> Output {
        self.kubectl_with(&self.kubeconfig_agent(), args, None)
    }

    /// kubectl as the admin, `stdin` on its standard input (for `-f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.kubectl_with(&self.kubeconfig_admin(), args, Some(stdin))
    }

    /// kubectl as the agent's ServiceAccount, `stdin` on its standard input.
    pub fn kubectl_as_agent_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.kubectl_with(&self.kubeconfig_agent(), args, Some(stdin))
    }

    /// kubectl as the admin; its stdout, or an error with its stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        checked(args, self.kubectl(args))
    }

    /// `kubectl apply -f -` of `yaml` as the admin; kubectl's stdout.
    pub fn apply_yaml(&self, yaml: &str) -> Result<String> {
        let args = ["apply", "-f", "-"];
        checked(&args, self.kubectl_stdin(&args, yaml))
    }

    /// `kubectl get ARGS -o json`, parsed.
    pub fn get_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let text = self.kubectl_ok(&all)?;
        serde_json::from_str(&text).with_context(|| format!("kubectl {} printed no JSON: {text}", all.join(" ")))
    }

    /// Create a Namespace with `labels`.
    pub fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let obj = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": name, "labels": label_map(labels) },
        });
        self.create(&obj)
    }

    /// Set (or overwrite) labels on a Namespace.
    pub fn label_namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let mut args = vec!["label".to_string(), "--overwrite".into(), "namespace".into(), name.into()];
        args.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.kubectl_ok(&args).map(drop)
    }

    /// Create a Node with `addresses` (`("InternalIP", "192.0.2.10")`, `("Hostname", "node-a")`)
    /// in its status, the way a kubelet registers one (the API keeps a Node's status on create).
    pub fn create_node(&self, name: &str, addresses: &[(&str, &str)]) -> Result<()> {
        let addresses: Vec<serde_json::Value> =
            addresses.iter().map(|(kind, addr)| serde_json::json!({ "type": kind, "address": addr })).collect();
        let obj = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
            "status": { "addresses": addresses },
        });
        self.create(&obj)
    }

    /// Create a Pod bound to `node` (spec.nodeName, as the scheduler would) with `labels`, in the
    /// pod network (hostNetwork false). It stays Pending without IPs until [`Self::set_pod_running`].
    pub fn create_pod(&self, namespace: &str, name: &str, node: &str, labels: &[(&str, &str)]) -> Result<()> {
        let obj = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": name, "namespace": namespace, "labels": label_map(labels) },
            "spec": {
                "nodeName": node,
                "hostNetwork": false,
                // Never pulled: there is no kubelet.
                "containers": [{ "name": "main", "image": "registry.invalid/fqdnd-test:none" }],
            },
        });
        self.create(&obj)
    }

    /// Write what a kubelet reports for a started pod: phase Running, status.podIP (the first of
    /// `ips`) and status.podIPs (all of them; at most one per family), through the status
    /// subresource. kubectl 1.20 has no `--subresource`, so this is a raw PUT of the object.
    pub fn set_pod_running(&self, namespace: &str, name: &str, ips: &[IpAddr]) -> Result<()> {
        let Some(first) = ips.first() else { bail!("a running pod needs at least one IP") };
        let mut pod = self.get_json(&["pod", "-n", namespace, name])?;
        let pod_ips: Vec<serde_json::Value> =
            ips.iter().map(|ip| serde_json::json!({ "ip": ip.to_string() })).collect();
        pod["status"] = serde_json::json!({ "phase": "Running", "podIP": first.to_string(), "podIPs": pod_ips });
        // Without a resourceVersion the PUT is unconditional: this is the only writer of status.
        if let Some(meta) = pod["metadata"].as_object_mut() {
            meta.remove("resourceVersion");
        }
        let url = format!("/api/v1/namespaces/{namespace}/pods/{name}/status");
        let args = ["replace", "--raw", url.as_str(), "-f", "-"];
        checked(&args, self.kubectl_stdin(&args, &pod.to_string())).map(drop)
    }

    /// Delete a Pod at once. A bound pod's normal deletion waits for its kubelet to confirm, and
    /// there is none.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> Result<()> {
        self.kubectl_ok(&["delete", "pod", "-n", namespace, name, "--grace-period=0", "--force", "--wait=false"])
            .map(drop)
    }

    /// The last `lines` lines of the API server's log (all its runs).
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        tail(&self.dir.path().join("apiserver.log"), lines)
    }

    /// The last `lines` lines of etcd's log.
    pub fn etcd_log_tail(&self, lines: usize) -> String {
        tail(&self.dir.path().join("etcd.log"), lines)
    }

    fn create(&self, obj: &serde_json::Value) -> Result<()> {
        let args = ["create", "-f", "-"];
        checked(&args, self.kubectl_stdin(&args, &obj.to_string())).map(drop)
    }

    fn kubectl_with(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(&self.bins.kubectl);
        // An explicit kubeconfig and a private discovery cache: nothing from the developer's
        // ~/.kube or $KUBECONFIG leaks in, and parallel servers never share cached API lists.
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--cache-dir={}", self.dir.path().join("kubectl-cache").display()))
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("running {}: {e}", self.bins.kubectl.display()));
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            // kubectl reads all of stdin before it acts; a failed write shows up in its output.
            let _ = pipe.write_all(text.as_bytes());
        }
        child.wait_with_output().unwrap_or_else(|e| panic!("waiting for kubectl: {e}"))
    }

    fn write_kubeconfig(&self, file: &str, user: &str, token: &str) -> Result<()> {
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fqdnd-test\n  cluster:\n    server: {url}\n    certificate-authority: {ca}\n\
             users:\n\
             - name: {user}\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: {user}\n  context:\n    cluster: fqdnd-test\n    user: {user}\n\
             current-context: {user}\n",
            url = self.url(),
            ca = self.ca_cert().display(),
        );
        fs::write(self.dir.path().join(file), text).with_context(|| format!("writing {file}"))
    }
}

impl Drop for KubeApiserver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- kube-apiserver log (tail), {}:\n{}\n--- etcd log (tail):\n{}",
                self.dir.path().display(),
                self.apiserver_log_tail(60),
                self.etcd_log_tail(20)
            );
        }
        if let Some(mut child) = self.apiserver.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.etcd.kill();
        let _ = self.etcd.wait();
    }
}

/// A CA, a serving certificate for 127.0.0.1 signed by it (so clients verify the server instead
/// of skipping verification), and the RSA key that signs and verifies ServiceAccount tokens.
fn make_pki(openssl: &Path, dir: &Path) -> Result<()> {
    // Our own config for the CA: the distribution's default one need not mark it a CA, and
    // rustls-based clients refuse a CA certificate without basicConstraints CA:TRUE.
    fs::write(
        dir.join("ca.cnf"),
        "[req]\ndistinguished_name = dn\nprompt = no\nx509_extensions = ca\n\
         [dn]\nCN = fqdnd-test-ca\n\
         [ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\nsubjectKeyIdentifier = hash\n",
    )?;
    fs::write(
        dir.join("server.ext"),
        "basicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n\
         subjectAltName = IP:127.0.0.1, DNS:localhost\n",
    )?;
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new(openssl).args(args).current_dir(dir).stdin(Stdio::null()).output()?;
        if !out.status.success() {
            bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(())
    };
    run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key"])?;
    run(&["req", "-x509", "-new", "-key", "ca.key", "-config", "ca.cnf", "-days", "7", "-out", "ca.crt"])?;
    run(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "server.key"])?;
    run(&[
        "req",
        "-new",
        "-key",
        "server.key",
        "-subj",
        "/CN=kube-apiserver",
        "-config",
        "ca.cnf",
        "-out",
        "server.csr",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-CAserial",
        "ca.srl",
        "-days",
        "7",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ])?;
    run(&["genrsa", "-out", "sa.key", "2048"])?;
    Ok(())
}

fn label_map(labels: &[(&str, &str)]) -> serde_json::Map<String, serde_json::Value> {
    labels.iter().map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string()))).collect()
}

fn checked(args: &[&str], out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "kubectl {} failed ({}): {} {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn log_file(dir: &Path, name: &str) -> Result<fs::File> {
    fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).with_context(|| format!("opening {name}"))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Path of `tool` on PATH (plus the sbin directories a non-login root shell may lack).
fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file())
}
