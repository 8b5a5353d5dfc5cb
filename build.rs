//! Stamps the binary with the commit it was built from, as FQDND_GIT_COMMIT (`fqdnd version`,
//! `fqdnd status`, `fqdnd_build_info`): `git rev-parse` when there is a repository, else the
//! FQDND_GIT_COMMIT the build was given (the container build copies no .git: pass it as a build
//! argument), else "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=FQDND_GIT_COMMIT");
    let from_git = git(&["rev-parse", "--short=12", "HEAD"]);
    if from_git.is_some() {
        // Rebuild the stamp when HEAD moves: HEAD itself, the branch it points to, packed refs.
        for path in [Some("HEAD".to_string()), git(&["symbolic-ref", "-q", "HEAD"]), Some("packed-refs".to_string())]
            .into_iter()
            .flatten()
        {
            // Only files that exist: cargo reruns the script on every build for a missing one.
            if let Some(p) = git(&["rev-parse", "--git-path", &path]).filter(|p| std::path::Path::new(p).exists()) {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    let commit = from_git
        .or_else(|| std::env::var("FQDND_GIT_COMMIT").ok().filter(|c| !c.trim().is_empty()))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=FQDND_GIT_COMMIT={commit}");
}
