//! What a manifest run tells at its end: the summary table and the JUnit
//! XML (each case's output capped).

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use super::{CaseResult, Outcome};

/// The table printed at the end.
pub fn summary(results: &[CaseResult], wall: f64, jobs: usize, shard: (usize, usize)) -> String {
    let w = results
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut s = format!(
        "\n{:<w$}  {:<7}  {:>6}  {:>6}  {:>8}  detail\n",
        "case", "result", "status", "expect", "time"
    );
    for r in results {
        s += &format!(
            "{:<w$}  {:<7}  {:>6}  {:>6}  {:>7.1}s  {}\n",
            r.name,
            r.outcome.name(),
            r.status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".into()),
            r.expect,
            r.seconds,
            r.detail
        );
    }
    let count = |o| results.iter().filter(|r| r.outcome == o).count();
    s += &format!(
        "\n{} cases in {wall:.1} s ({jobs} at a time, shard {}/{}): {} pass, {} fail, {} timeout, {} error\n",
        results.len(),
        shard.0,
        shard.1,
        count(Outcome::Pass),
        count(Outcome::Fail),
        count(Outcome::Timeout),
        count(Outcome::Error)
    );
    s
}

pub(super) fn read_capped(path: &Path, cap: u64) -> String {
    let mut v = Vec::new();
    if let Ok(f) = File::open(path) {
        let _ = f.take(cap).read_to_end(&mut v);
    }
    String::from_utf8_lossy(&v).into_owned()
}

/// JUnit XML: one test suite (the manifest), one test case per case.
pub fn junit(manifest: &Path, results: &[CaseResult], wall: f64) -> Result<String, String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let suite_name = manifest
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "splitvm".into());
    let mut suite = TestSuite::new(suite_name.clone());
    for r in results {
        let status = match r.outcome {
            Outcome::Pass => TestCaseStatus::success(),
            o => {
                let kind = if o == Outcome::Error {
                    NonSuccessKind::Error
                } else {
                    NonSuccessKind::Failure
                };
                let mut st = TestCaseStatus::non_success(kind);
                st.set_message(r.detail.clone());
                st.set_type(o.name());
                st
            }
        };
        let mut tc = TestCase::new(r.name.clone(), status);
        tc.set_classname(suite_name.clone());
        tc.set_time(Duration::from_secs_f64(r.seconds));
        tc.set_system_out(read_capped(&r.dir.join("stdout"), 64 * 1024));
        tc.set_system_err(read_capped(&r.dir.join("stderr"), 64 * 1024));
        suite.add_test_case(tc);
    }
    suite.set_time(Duration::from_secs_f64(wall));
    let mut report = Report::new("splitvm");
    report.add_test_suite(suite);
    report
        .to_string()
        .map_err(|e| format!("cannot write JUnit XML: {e}"))
}
