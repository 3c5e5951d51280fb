//! The fuzz targets' regression corpus (`fuzz/corpus/<target>/`: seeds, and every input that
//! ever crashed a target) fed to the same entry points `cargo fuzz` runs
//! (`humanline::fuzzing`), so `cargo test` keeps each fixed crash fixed without nightly.
//! Fuzzing itself: see `fuzz/README.md`.

use std::path::Path;

#[test]
fn every_corpus_input_runs_through_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let mut total = 0;
    for (name, target) in humanline::fuzzing::TARGETS {
        let dir = root.join(name);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        inputs.sort();
        assert!(
            !inputs.is_empty(),
            "no corpus for {name} in {}",
            dir.display()
        );
        for input in inputs {
            let data = std::fs::read(&input).expect("corpus file");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name} panics on {}", input.display());
            total += 1;
        }
    }
    eprintln!(
        "fuzz corpus: {total} inputs over {} targets",
        humanline::fuzzing::TARGETS.len()
    );
}

#[test]
fn every_fuzz_target_has_a_corpus_folder_and_a_cargo_fuzz_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in humanline::fuzzing::TARGETS {
        assert!(
            root.join("corpus").join(name).is_dir(),
            "fuzz/corpus/{name}"
        );
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] {name}"
        );
    }
}
