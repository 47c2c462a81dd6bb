//! `sluice plugin new` and `sluice plugin wit`: a skeleton in each language, written by the real
//! binary into a folder outside this repository, built with its own `build.sh` and the documented
//! toolchain, then run against the fixtures it ships with `sluice plugin test`.

use std::path::Path;
use std::process::{Command, Output};

use crate::harness::{repo_root, shared_wasm_cache, skip, Scratch, SLUICE_BIN};

fn sluice(args: &[&str]) -> Output {
    Command::new(SLUICE_BIN).args(args).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// Writes a skeleton in `lang`, builds it, runs its fixtures; asserts every one passes.
fn skeleton_builds_and_passes_its_own_fixtures(lang: &str) {
    let scratch = Scratch::new(&format!("scaffold-{lang}"));
    assert!(!scratch.path().starts_with(repo_root()), "the skeleton must be tried outside the repository");
    let name = format!("order-{lang}");
    let dir = scratch.path().join(&name);
    let made = sluice(&["plugin", "new", "--lang", lang, &name, "--dir", dir.to_str().unwrap()]);
    assert!(made.status.success(), "{}", text(&made));
    assert!(text(&made).contains("./build.sh"), "it says what to do next: {}", text(&made));
    for file in ["build.sh", "README.md", "wit/plugin.wit", "fixtures/passes-with-header.expect.json"] {
        assert!(dir.join(file).is_file(), "{lang}: {file} is missing");
    }
    assert_no_path_leaves(&dir, &dir);

    // Rust guests share the example plugins' target directory: the standard library that
    // Debian's toolchain builds for wasm32 is then built once per machine, not once per test.
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| repo_root().join("plugins/target").into());
    let built = Command::new("bash").arg(dir.join("build.sh")).env("CARGO_TARGET_DIR", target).output().unwrap();
    if built.status.code() == Some(69) {
        return skip(&format!("the {lang} toolchain is missing: {}", String::from_utf8_lossy(&built.stderr)));
    }
    assert!(built.status.success(), "{lang}: build.sh failed:\n{}", text(&built));
    let wasm = dir.join(format!("{name}.wasm"));
    assert!(wasm.is_file(), "{lang}: build.sh made no {name}.wasm");

    let fixtures = dir.join("fixtures");
    let tested = run_fixtures(&wasm, &fixtures);
    let out = text(&tested);
    assert_eq!(tested.status.code(), Some(0), "{lang}:\n{out}");
    assert!(out.contains("4 fixture(s), 4 passed, 0 failed"), "{lang}:\n{out}");

    // The fixtures hold the code to what it does: a verdict that changes is caught.
    let expect = fixtures.join("passes-with-header.expect.json");
    let changed = std::fs::read_to_string(&expect).unwrap().replace(&format!("\"{name}\""), "\"someone-else\"");
    std::fs::write(&expect, changed).unwrap();
    let tested = run_fixtures(&wasm, &fixtures);
    assert_eq!(tested.status.code(), Some(1), "{lang}:\n{}", text(&tested));
    assert!(text(&tested).contains("FAIL passes-with-header"), "{lang}:\n{}", text(&tested));
}

/// `sluice plugin test WASM --fixtures DIR`.
fn run_fixtures(wasm: &Path, fixtures: &Path) -> Output {
    let cache = shared_wasm_cache();
    let args = ["plugin", "test", wasm.to_str().unwrap(), "--fixtures", fixtures.to_str().unwrap(), "--cache-dir"];
    Command::new(SLUICE_BIN).args(args).arg(cache).output().unwrap()
}

/// No written file reaches outside its folder (`../../wit` would only work inside this repository).
fn assert_no_path_leaves(root: &Path, dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            assert_no_path_leaves(root, &path);
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            if path.ends_with("package-lock.json") {
                continue; // npm's own relative paths into node_modules
            }
            assert!(
                !text.contains("../"),
                "{} points outside its folder:\n{text}",
                path.strip_prefix(root).unwrap().display()
            );
        }
    }
}

#[test]
fn a_rust_skeleton_builds_outside_the_repository_and_passes_its_own_fixtures() {
    skeleton_builds_and_passes_its_own_fixtures("rust");
}

#[test]
fn a_c_skeleton_builds_outside_the_repository_and_passes_its_own_fixtures() {
    skeleton_builds_and_passes_its_own_fixtures("c");
}

#[test]
fn a_javascript_skeleton_builds_outside_the_repository_and_passes_its_own_fixtures() {
    skeleton_builds_and_passes_its_own_fixtures("js");
}

#[test]
fn a_python_skeleton_builds_outside_the_repository_and_passes_its_own_fixtures() {
    skeleton_builds_and_passes_its_own_fixtures("python");
}

#[test]
fn an_assemblyscript_skeleton_builds_outside_the_repository_and_passes_its_own_fixtures() {
    skeleton_builds_and_passes_its_own_fixtures("assemblyscript");
}

#[test]
fn plugin_wit_writes_the_contract_this_binary_was_built_with() {
    let scratch = Scratch::new("wit");
    let out = scratch.path().join("contract");
    let written = sluice(&["plugin", "wit", "--out", out.to_str().unwrap()]);
    assert!(written.status.success(), "{}", text(&written));
    for file in ["plugin.wit", "core-abi.md"] {
        let ours = std::fs::read(repo_root().join("wit").join(file)).unwrap();
        assert_eq!(std::fs::read(out.join(file)).unwrap(), ours, "{file} differs from wit/{file}");
    }
}

#[test]
fn plugin_new_refuses_a_bad_name_an_unknown_language_and_a_folder_with_files_and_writes_nothing() {
    let scratch = Scratch::new("scaffold-refused");
    let dir = scratch.path().join("p");
    let dir = dir.to_str().unwrap();

    let bad_name = sluice(&["plugin", "new", "--lang", "rust", "My_Plugin", "--dir", dir]);
    assert_eq!(bad_name.status.code(), Some(1));
    assert!(text(&bad_name).contains("invalid plugin name `My_Plugin`"), "{}", text(&bad_name));

    let bad_lang = sluice(&["plugin", "new", "--lang", "cobol", "ok", "--dir", dir]);
    assert_eq!(bad_lang.status.code(), Some(2), "clap's usage error");
    assert!(text(&bad_lang).contains("unknown language `cobol`"), "{}", text(&bad_lang));
    assert!(!Path::new(dir).exists(), "nothing was written");

    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(Path::new(dir).join("mine.txt"), "keep me").unwrap();
    let occupied = sluice(&["plugin", "new", "--lang", "js", "ok", "--dir", dir]);
    assert_eq!(occupied.status.code(), Some(1));
    assert!(text(&occupied).contains("already exists and is not empty"), "{}", text(&occupied));
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["mine.txt"], "nothing was added or overwritten");
}
