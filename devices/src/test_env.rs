//! What tests may assume of the machine, in one place for every crate's
//! tests (tests/common uses it too).
//!
//! A test that cannot run here says why. On a developer's machine that is
//! a loud "SKIPPED" line and the test returns; under CI (`CI=true`), which
//! runs as root with everything scripts/setup.sh installs, it is a failure:
//! a skipped test in CI would pass having checked nothing. docs/testing.md
//! lists what each test needs.

/// True under CI (`CI=true` or `CI=1`, as GitHub Actions, GitLab and
/// .ci/run's callers set it).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Report that `test` cannot run because of `why`: a panic under CI, a
/// "SKIPPED" line otherwise (the caller then returns).
pub fn skip(test: &str, why: &str) {
    if in_ci() {
        panic!("{test} cannot run ({why}); under CI=true a skip is a failure");
    }
    eprintln!("SKIPPED: {test}: {why} (this would fail under CI=true)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_a_failure_under_ci_only() {
        // The environment is the process's: decide from what it says now.
        let r = std::panic::catch_unwind(|| skip("t", "why"));
        assert_eq!(r.is_err(), in_ci());
    }
}
