//! Sets `ISTHMUS_COMMIT` for `isthmus --version`: the `ISTHMUS_COMMIT`
//! environment variable when set (a Docker build without `.git`, a packager),
//! else `git rev-parse --short HEAD`, else `unknown` (no git, or a source tarball).

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points to
/// (a commit) and packed-refs (where the branch may live). Worktree-aware.
fn watch_git(dir: &Path) {
    let mut paths = vec!["HEAD".to_string()];
    if let Some(r) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        paths.push(r);
    }
    paths.push("packed-refs".to_string());
    for p in paths {
        if let Some(path) = git(
            dir,
            &["rev-parse", "--path-format=absolute", "--git-path", &p],
        ) {
            // A path that does not exist would make cargo rerun this script on every build.
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ISTHMUS_COMMIT");
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let dir = Path::new(&dir);
    let (commit, source) = match std::env::var("ISTHMUS_COMMIT") {
        Ok(c) if !c.trim().is_empty() => (c.trim().to_string(), "env"),
        _ => {
            watch_git(dir);
            match git(dir, &["rev-parse", "--short", "HEAD"]) {
                Some(c) => (c, "git"),
                None => ("unknown".to_string(), "none"),
            }
        }
    };
    println!("cargo:rustc-env=ISTHMUS_COMMIT={commit}");
    // For gateway/tests/cli.rs: where the commit came from.
    println!("cargo:rustc-env=ISTHMUS_COMMIT_SOURCE={source}");
}
