// The commit `--version` names, decided for build.rs (which includes this
// file) and unit-tested by the library (lib.rs includes it under test):
// build scripts have no tests of their own. A build never fails over it:
// a source tarball (no .git), a tarball unpacked inside some other
// repository, or no `git` at all all give "unknown", never another
// repository's commit or a line of an error message.
use std::{path::Path, process::Command};

/// What `--version` says when the commit is not known.
pub const UNKNOWN: &str = "unknown";

/// `git -C root ARGS` through `program`: its trimmed stdout when it ran,
/// succeeded and printed something; else None (no git, no repository).
pub fn git(program: &str, root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(program).arg("-C").arg(root).args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

/// Whether `root` is the top level of a git checkout of its own (not a
/// directory inside another repository).
pub fn own_checkout(root: &Path, git: &dyn Fn(&[&str]) -> Option<String>) -> bool {
    git(&["rev-parse", "--show-toplevel"])
        .zip(std::fs::canonicalize(root).ok())
        .is_some_and(|(top, root)| Path::new(&top) == root)
}

/// The commit: a packager's IMDS_OBSERVER_COMMIT (`packaged`) first, else
/// the checkout's HEAD (short) where `root` is its own checkout, else
/// [`UNKNOWN`]. Only a hex commit is taken from git.
pub fn commit(
    packaged: Option<&str>,
    root: &Path,
    git: &dyn Fn(&[&str]) -> Option<String>,
) -> String {
    if let Some(c) = packaged.map(str::trim).filter(|c| !c.is_empty()) {
        return c.to_string();
    }
    if !own_checkout(root, git) {
        return UNKNOWN.to_string();
    }
    git(&["rev-parse", "--short=12", "HEAD"])
        .filter(|c| (7..=64).contains(&c.len()) && c.chars().all(|c| c.is_ascii_hexdigit()))
        .unwrap_or_else(|| UNKNOWN.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `git` that answers `toplevel` and `head`, as a checkout would.
    fn fake<'a>(
        toplevel: Option<&'a str>,
        head: Option<&'a str>,
    ) -> impl Fn(&[&str]) -> Option<String> + 'a {
        move |args: &[&str]| match args {
            ["rev-parse", "--show-toplevel"] => toplevel.map(String::from),
            ["rev-parse", "--short=12", "HEAD"] => head.map(String::from),
            _ => None,
        }
    }

    fn here() -> std::path::PathBuf {
        std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).unwrap()
    }

    #[test]
    fn a_checkout_of_its_own_names_its_head() {
        let root = here();
        let git = fake(root.to_str(), Some("0123456789ab"));
        assert_eq!(commit(None, &root, &git), "0123456789ab");
        // A packager's value wins, even over a checkout.
        assert_eq!(commit(Some(" 1.2-3 "), &root, &git), "1.2-3");
    }

    /// A source tarball: no .git (git fails), no git at all, or unpacked
    /// inside another repository (whose commit is not this source's).
    #[test]
    fn without_a_checkout_of_its_own_the_commit_is_unknown() {
        let root = here();
        assert_eq!(commit(None, &root, &fake(None, None)), UNKNOWN);
        assert_eq!(commit(Some(""), &root, &fake(None, None)), UNKNOWN);
        assert_eq!(commit(None, &root, &fake(Some("/elsewhere"), Some("0123456789ab"))), UNKNOWN);
        // Whatever else git printed is not a commit.
        assert_eq!(commit(None, &root, &fake(root.to_str(), Some("fatal: bad HEAD"))), UNKNOWN);
        assert_eq!(commit(None, &root, &fake(root.to_str(), None)), UNKNOWN);
    }

    /// The real runner: no `git` program, and a directory that is no
    /// checkout of its own (a tarball unpacked under /tmp, or inside this
    /// repository's target/), both give "unknown" and no error.
    #[test]
    fn no_git_or_no_dot_git_gives_unknown() {
        let dir = std::env::temp_dir().join(format!("imds-commit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(git("/nonexistent/git", &dir, &["rev-parse", "HEAD"]), None);
        let absent = |args: &[&str]| git("/nonexistent/git", &dir, args);
        assert_eq!(commit(None, &dir, &absent), UNKNOWN);
        let real = |args: &[&str]| git("git", &dir, args);
        assert_eq!(commit(None, &dir, &real), UNKNOWN);
        let inside = here().join("src");
        let real = |args: &[&str]| git("git", &inside, args);
        assert_eq!(commit(None, &inside, &real), UNKNOWN, "a directory inside a checkout");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
