//! The README's "Deploy on Kubernetes" commands, run as written against a real kube-apiserver
//! 1.20 (loopback): every `kubectl` line of the section's first shell block, from the repository
//! root. (The image build line needs a container runtime and is not run here; the image is
//! deploy/Containerfile, built by `docker build` in the section.)

mod common;

use std::time::{Duration, Instant};

use common::kube::{self, KubeApiserver};

/// The `kubectl` command lines of the README section, comments stripped.
fn deploy_commands() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(common::paths::workspace().join("README.md")).expect("README.md");
    let section = readme.split("## Deploy on Kubernetes").nth(1).expect("a Deploy on Kubernetes section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let block = section.split("```sh").nth(1).and_then(|b| b.split("```").next()).expect("a sh block");
    block
        .lines()
        .map(|l| l.split(" #").next().unwrap_or(l).trim())
        .filter(|l| l.starts_with("kubectl "))
        .map(|l| l.split_whitespace().skip(1).map(str::to_string).collect())
        .collect()
}

#[test]
fn readme_deploy_commands_run_against_a_real_apiserver() {
    if !kube::available("readme_deploy_commands_run_against_a_real_apiserver") {
        return;
    }
    let commands = deploy_commands();
    assert!(commands.len() >= 5, "{commands:?}");
    let kube = KubeApiserver::start().unwrap();
    std::env::set_current_dir(common::paths::workspace()).unwrap();
    let mut described = String::new();
    for args in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // kubectl 1.20's `wait` fails outright while a fresh CRD has no conditions yet, and an
        // apply of a CNP fails until its CRD is served: retried, as a user would.
        let deadline = Instant::now() + Duration::from_secs(60);
        let out = loop {
            match kube.kubectl_ok(&args) {
                Ok(out) => break out,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("kubectl {}: {e:#}; again", args.join(" "));
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(e) => panic!("README command kubectl {}: {e:#}", args.join(" ")),
            }
        };
        if args.first() == Some(&"describe") {
            described = out;
        }
    }
    assert!(described.contains("locking-down-alpine"), "{described}");
    let ds = kube.get_json(&["daemonset", "-n", "kube-system", "fqdnd"]).unwrap();
    assert_eq!(ds["spec"]["template"]["spec"]["serviceAccountName"], "fqdnd");
}
