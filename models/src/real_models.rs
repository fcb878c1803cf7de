//! Where tests and benches find the real model files that scripts/fetch-models.sh fetches:
//! `$RETORT_MODELS_DIR`, else `models-cache/` in the repository.

use std::io::Write;
use std::path::PathBuf;

/// The path of model file `name`, or None when it is absent — after a loud note on stderr,
/// so a skipped test is seen. With `RETORT_REQUIRE_MODELS` set (as scripts/test.sh and CI
/// set it) an absent file is a failure instead.
pub fn real_model(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("RETORT_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models-cache"));
    let path = dir.join(name);
    if path.exists() {
        return Some(path);
    }
    assert!(std::env::var_os("RETORT_REQUIRE_MODELS").is_none(), "{} is missing: run scripts/fetch-models.sh", path.display());
    // Written to the stream itself, past the test harness's capture of eprintln!, so it is seen.
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {} not found; run scripts/fetch-models.sh (or set RETORT_MODELS_DIR) ***\n", path.display());
    None
}
