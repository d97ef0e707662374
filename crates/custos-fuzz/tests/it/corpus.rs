//! The seed corpus in `fuzz/corpus/<target>/`: every file through its target, and every target
//! wired into the cargo-fuzz project.

use std::path::{Path, PathBuf};

use custos_fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn every_target_runs_over_its_corpus() {
    for (name, target) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus `{}`: {e}", dir.display()));
        let mut files = 0;
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            if path.is_file() {
                let data = std::fs::read(&path).expect("read corpus file");
                target(&data);
                files += 1;
            }
        }
        assert!(files > 0, "corpus `{}` is empty", dir.display());
    }
}

#[test]
fn every_target_has_a_libfuzzer_entry_point() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let src =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("`{}`: {e}", file.display()));
        assert!(
            src.contains(&format!("custos_fuzz::{name}(")),
            "`{}` does not call `custos_fuzz::{name}`",
            file.display()
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] `{name}`"
        );
    }
}

// Inputs that once crashed a target stay in `fuzz/crashes/<target>/` and are replayed on every
// run, so a fixed crash cannot come back.
#[test]
fn known_crashes_are_fixed() {
    for (name, target) in TARGETS {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join("crashes").join(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("crash entry").path();
            let data = std::fs::read(&path).expect("read crash file");
            target(&data);
        }
    }
}

// A private-key block where a public key belongs: generated here, so no key material (real
// or look-alike) is committed to the corpus.
#[test]
fn a_private_key_block_is_refused_as_a_public_key() {
    let key = custos_crypto::AgentKey::generate().expect("generate a key");
    let pem = key.to_pkcs8_pem();
    custos_fuzz::public_key(pem.as_bytes());
    assert!(custos_crypto::parse_public_key_pem(&pem).is_err());
}
