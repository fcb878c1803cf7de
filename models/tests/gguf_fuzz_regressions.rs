//! The GGUF fuzz corpus as plain tests (no cargo-fuzz needed): every committed seed
//! (fuzz/seeds/gguf/) must validate and open, and every input the fuzzer once crashed on
//! (fuzz/regressions/gguf_header/, fuzz/regressions/gguf_body/) must now be handled without a
//! panic, the same way by `GgufFile::validate_bytes` and `GgufFile::open`.

use std::path::{Path, PathBuf};

use retort_models::gguf::GgufFile;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

fn scratch(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("retort-gguf-fuzz-regressions-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// validate_bytes and open must agree: both accept (same tensor count) or both reject.
fn check_agrees(name: &str, bytes: &[u8]) -> Result<usize, String> {
    let validated = GgufFile::validate_bytes(bytes);
    let opened = GgufFile::open(scratch(name, bytes));
    match (&validated, &opened) {
        (Ok(n), Ok(f)) => assert_eq!(*n, f.tensors().len(), "{name}"),
        (Err(_), Err(_)) => {}
        (v, o) => panic!("{name}: validate_bytes says {v:?} but open says {:?}", o.as_ref().map(|f| f.tensors().len())),
    }
    validated
}

#[test]
fn seeds_validate_and_open() {
    let seeds = files_in(&fuzz_dir().join("seeds/gguf"));
    assert!(!seeds.is_empty(), "no seeds in fuzz/seeds/gguf");
    for path in seeds {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        if let Err(e) = check_agrees(&name, &bytes) {
            panic!("seed {name} does not validate: {e}");
        }
    }
}

#[test]
fn regressions_do_not_panic() {
    for target in ["gguf_header", "gguf_body"] {
        for path in files_in(&fuzz_dir().join("regressions").join(target)) {
            let name = format!("{target}-{}", path.file_name().unwrap().to_string_lossy());
            let mut bytes = std::fs::read(&path).unwrap();
            // gguf_body puts "GGUF" and version 3 in front of inputs that lack the magic.
            if target == "gguf_body" && !bytes.starts_with(b"GGUF") {
                bytes.splice(0..0, *b"GGUF\x03\x00\x00\x00");
            }
            let _ = check_agrees(&name, &bytes);
        }
    }
}

#[test]
fn validate_bytes_rejects_what_open_rejects() {
    // Truncating the richest seed at every length must fail the same way in both entries
    // (the data-range check is the shared part; the header parser is the same function).
    let bytes = std::fs::read(fuzz_dir().join("seeds/gguf/every_value.gguf")).unwrap();
    for len in (0..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        assert!(check_agrees(&format!("truncated-{len}"), &bytes[..len]).is_err(), "{len}");
    }
}
