//! `sluice plugin new` and `sluice plugin wit`: a working plugin skeleton in each supported language,
//! and the plugin contract, written from the binary itself.
//!
//! Everything a skeleton needs is compiled into the binary (the templates under
//! `gateway/templates/plugin/`, the WIT, the C bindings and the npm lockfiles of the example plugins),
//! so a skeleton builds anywhere, never reaching back into a checkout of this repository. Each one
//! has a source file, `build.sh` (exit 69 when its toolchain is missing), a README, `wit/`, and
//! fixtures that its code as written passes: drop types starting with `drop_prefix` (default
//! `test.`), pass the rest with an `x-processed-by: NAME` header, fail on a non-string prefix.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The plugin contract: the `sluice:plugin` world.
pub const WIT: &str = include_str!("../../../wit/plugin.wit");
/// The core-module ABI, for languages that emit core modules.
pub const CORE_ABI: &str = include_str!("../../../wit/core-abi.md");

/// A language `sluice plugin new` writes skeletons in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// Rust, `wit-bindgen`, target `wasm32-wasip2`.
    Rust,
    /// C, clang with wasi-libc, adapted into a component by jco.
    C,
    /// JavaScript, jco's QuickJS backend.
    Js,
    /// Python, componentize-py.
    Python,
    /// AssemblyScript, a core module speaking the core-module ABI.
    AssemblyScript,
}

impl Language {
    /// Every language, in the order the docs list them.
    pub const ALL: [Language; 5] =
        [Language::Rust, Language::C, Language::Js, Language::Python, Language::AssemblyScript];

    /// The name `--lang` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Rust => "rust",
            Language::C => "c",
            Language::Js => "js",
            Language::Python => "python",
            Language::AssemblyScript => "assemblyscript",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::C => "C",
            Language::Js => "JavaScript",
            Language::Python => "Python",
            Language::AssemblyScript => "AssemblyScript",
        }
    }

    /// The file a plugin author edits.
    pub fn source_file(self) -> &'static str {
        match self {
            Language::Rust => "src/lib.rs",
            Language::C => "plugin.c",
            Language::Js => "plugin.js",
            Language::Python => "app.py",
            Language::AssemblyScript => "assembly/index.ts",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Language {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "rust" | "rs" => Ok(Language::Rust),
            "c" => Ok(Language::C),
            "js" | "javascript" => Ok(Language::Js),
            "python" | "py" => Ok(Language::Python),
            "assemblyscript" | "as" => Ok(Language::AssemblyScript),
            other => Err(format!("unknown language `{other}`: one of rust, c, js, python, assemblyscript")),
        }
    }
}

/// Why a skeleton or the WIT could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    /// The plugin's name cannot name a package in every toolchain.
    #[error("invalid plugin name `{name}`: {why}")]
    Name {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The target directory exists and holds files: nothing is overwritten.
    #[error("{0} already exists and is not empty: choose another --dir, or remove it")]
    NotEmpty(PathBuf),
    /// A file or directory could not be written.
    #[error("failed to write {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// One file of a skeleton: its path inside the plugin's folder and its contents.
pub struct File {
    /// Relative path, `/`-separated.
    pub path: &'static str,
    /// Contents, placeholders filled in.
    pub contents: Cow<'static, [u8]>,
    /// Whether it is a script to run.
    pub executable: bool,
}

/// A template: relative path, text with `{{…}}` placeholders.
type Template = (&'static str, &'static str);

macro_rules! template {
    ($path:literal, $file:literal) => {
        ($path, include_str!(concat!("../../templates/plugin/", $file)))
    };
}

const FIXTURES: [Template; 10] = [
    template!("fixtures/passes-with-header.event.json", "common/fixtures/passes-with-header.event.json"),
    template!("fixtures/passes-with-header.expect.json", "common/fixtures/passes-with-header.expect.json"),
    template!("fixtures/test-type-dropped.event.json", "common/fixtures/test-type-dropped.event.json"),
    template!("fixtures/test-type-dropped.expect.json", "common/fixtures/test-type-dropped.expect.json"),
    template!(
        "fixtures/configured-prefix-dropped.config.toml",
        "common/fixtures/configured-prefix-dropped.config.toml"
    ),
    template!("fixtures/configured-prefix-dropped.event.json", "common/fixtures/configured-prefix-dropped.event.json"),
    template!(
        "fixtures/configured-prefix-dropped.expect.json",
        "common/fixtures/configured-prefix-dropped.expect.json"
    ),
    template!("fixtures/bad-config-fails.config.toml", "common/fixtures/bad-config-fails.config.toml"),
    template!("fixtures/bad-config-fails.event.json", "common/fixtures/bad-config-fails.event.json"),
    template!("fixtures/bad-config-fails.expect.json", "common/fixtures/bad-config-fails.expect.json"),
];
const README: &str = include_str!("../../templates/plugin/common/README.md");

/// The npm lockfile of the example plugins that build with jco: a skeleton installs exactly the
/// versions CI builds with. Its package name is replaced by the plugin's.
const JCO_LOCK: (&str, &str) = (include_str!("../../../plugins/js-filter/package-lock.json"), "sluice-js-filter");
/// The same for AssemblyScript's compiler.
const ASC_LOCK: (&str, &str) = (include_str!("../../../plugins/as-tagger/package-lock.json"), "sluice-as-tagger");
/// The console and TextEncoder/TextDecoder that QuickJS lacks, shared with the example plugins.
const JS_PRELUDE: &str = include_str!("../../../plugins/js-prelude/prelude.js");
/// wit-bindgen 0.63.0's C bindings for [`WIT`], as the C example commits them.
const C_BINDINGS: [(&str, &[u8]); 3] = [
    ("gen/plugin.c", include_bytes!("../../../plugins/c-prefix/gen/plugin.c")),
    ("gen/plugin.h", include_bytes!("../../../plugins/c-prefix/gen/plugin.h")),
    ("gen/plugin_component_type.o", include_bytes!("../../../plugins/c-prefix/gen/plugin_component_type.o")),
];

/// What a language adds to the common files: templates, build script, guide, and whether it takes
/// an npm lockfile.
struct Kit {
    templates: &'static [Template],
    build: &'static str,
    guide: &'static str,
    lock: Option<(&'static str, &'static str)>,
}

fn kit(language: Language) -> Kit {
    match language {
        Language::Rust => Kit {
            templates: &[
                template!("Cargo.toml", "rust/Cargo.toml"),
                template!("src/lib.rs", "rust/src/lib.rs"),
                template!(".gitignore", "rust/gitignore"),
            ],
            build: include_str!("../../templates/plugin/rust/build.sh"),
            guide: include_str!("../../templates/plugin/rust/guide.md"),
            lock: None,
        },
        Language::C => Kit {
            templates: &[
                template!("plugin.c", "c/plugin.c"),
                template!("package.json", "c/package.json"),
                template!(".gitignore", "c/gitignore"),
            ],
            build: include_str!("../../templates/plugin/c/build.sh"),
            guide: include_str!("../../templates/plugin/c/guide.md"),
            lock: Some(JCO_LOCK),
        },
        Language::Js => Kit {
            templates: &[
                template!("plugin.js", "js/plugin.js"),
                template!("package.json", "js/package.json"),
                template!(".gitignore", "js/gitignore"),
                ("prelude.js", JS_PRELUDE),
            ],
            build: include_str!("../../templates/plugin/npm/build.sh"),
            guide: include_str!("../../templates/plugin/js/guide.md"),
            lock: Some(JCO_LOCK),
        },
        Language::Python => Kit {
            templates: &[template!("app.py", "python/app.py"), template!(".gitignore", "python/gitignore")],
            build: include_str!("../../templates/plugin/python/build.sh"),
            guide: include_str!("../../templates/plugin/python/guide.md"),
            lock: None,
        },
        Language::AssemblyScript => Kit {
            templates: &[
                template!("assembly/index.ts", "assemblyscript/assembly/index.ts"),
                template!("package.json", "assemblyscript/package.json"),
                template!(".gitignore", "assemblyscript/gitignore"),
            ],
            build: include_str!("../../templates/plugin/npm/build.sh"),
            guide: include_str!("../../templates/plugin/assemblyscript/guide.md"),
            lock: Some(ASC_LOCK),
        },
    }
}

/// Names that some toolchain reserves (Cargo refuses `test` and the standard crates).
const RESERVED: [&str; 6] = ["test", "std", "core", "alloc", "proc-macro", "self"];

/// Checks that `name` can name the plugin everywhere it appears: a Cargo package, an npm package, a
/// file name, a header value. Lower-case ASCII letters, digits and single hyphens, starting with a
/// letter, at most 64 characters.
pub fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let bad = |why| Err(ScaffoldError::Name { name: name.to_string(), why });
    if name.is_empty() || name.len() > 64 {
        return bad("it must be 1 to 64 characters long");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("it must start with a lower-case letter");
    }
    if !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return bad("it may hold only lower-case letters, digits and hyphens");
    }
    if name.ends_with('-') || name.contains("--") {
        return bad("hyphens must sit between letters or digits");
    }
    if RESERVED.contains(&name) {
        return bad("a toolchain reserves it");
    }
    Ok(())
}

/// Every file of the skeleton for a plugin `name` in `language`.
pub fn files(language: Language, name: &str) -> Result<Vec<File>, ScaffoldError> {
    check_name(name)?;
    let kit = kit(language);
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{lang}}", language.as_str())
            .replace("{{language}}", language.title())
            .replace("{{source}}", language.source_file())
    };
    let text = |path, contents: String| File { path, contents: Cow::Owned(contents.into_bytes()), executable: false };
    let mut files: Vec<File> =
        kit.templates.iter().chain(&FIXTURES).map(|(path, body)| text(path, fill(body))).collect();
    files.push(text("README.md", fill(&README.replace("{{guide}}", kit.guide.trim_end()))));
    files.push(File { path: "build.sh", contents: Cow::Owned(fill(kit.build).into_bytes()), executable: true });
    files.push(text("wit/plugin.wit", WIT.to_string()));
    files.push(text("wit/core-abi.md", CORE_ABI.to_string()));
    if let Some((lock, example)) = kit.lock {
        files.push(text("package-lock.json", lock.replace(&format!("\"{example}\""), &format!("\"{name}\""))));
    }
    if language == Language::C {
        files.extend(C_BINDINGS.iter().map(|(path, bytes)| File {
            path,
            contents: Cow::Borrowed(*bytes),
            executable: false,
        }));
    }
    Ok(files)
}

/// Writes the skeleton of plugin `name` in `language` into `dir` (created; it may exist if empty).
/// Returns the paths written.
pub fn create(language: Language, name: &str, dir: &Path) -> Result<Vec<PathBuf>, ScaffoldError> {
    let files = files(language, name)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ScaffoldError::Io { path, source }
    };
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io(dir))?;
        if entries.next().is_some() {
            return Err(ScaffoldError::NotEmpty(dir.to_path_buf()));
        }
    }
    files.iter().map(|file| write(dir, file).map_err(io(&dir.join(file.path)))).collect()
}

/// Writes `wit/plugin.wit` and `wit/core-abi.md` into `dir` (created), replacing older copies.
pub fn write_wit(dir: &Path) -> Result<Vec<PathBuf>, ScaffoldError> {
    [("plugin.wit", WIT), ("core-abi.md", CORE_ABI)]
        .into_iter()
        .map(|(path, text)| {
            let file = File { path, contents: Cow::Borrowed(text.as_bytes()), executable: false };
            write(dir, &file).map_err(|source| ScaffoldError::Io { path: dir.join(path), source })
        })
        .collect()
}

fn write(dir: &Path, file: &File) -> std::io::Result<PathBuf> {
    let path = dir.join(file.path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, &file.contents)?;
    #[cfg(unix)]
    if file.executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_language_fills_every_placeholder_and_ships_the_wit_and_its_fixtures() {
        for language in Language::ALL {
            let files = files(language, "order-tagger").unwrap();
            for file in &files {
                let text = String::from_utf8_lossy(&file.contents);
                assert!(!text.contains("{{"), "{language} {}: a placeholder is left:\n{text}", file.path);
            }
            let has = |path: &str| files.iter().any(|f| f.path == path);
            assert!(
                has("wit/plugin.wit") && has("build.sh") && has("README.md") && has(language.source_file()),
                "{language}"
            );
            assert_eq!(files.iter().filter(|f| f.path.ends_with(".expect.json")).count(), 4, "{language}");
            let readme = files.iter().find(|f| f.path == "README.md").unwrap();
            assert!(String::from_utf8_lossy(&readme.contents).contains(&format!("--lang {language} order-tagger")));
        }
    }

    #[test]
    fn the_lockfile_names_the_plugin_not_the_example_it_came_from() {
        let files = files(Language::Js, "my-filter").unwrap();
        let lock = files.iter().find(|f| f.path == "package-lock.json").unwrap();
        let lock: serde_json::Value = serde_json::from_slice(&lock.contents).unwrap();
        assert_eq!(lock["name"], "my-filter");
        assert_eq!(lock["packages"][""]["name"], "my-filter");
    }

    #[test]
    fn names_that_a_toolchain_would_refuse_are_refused_with_the_reason() {
        for good in ["a", "order-tagger", "v2-filter"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "1 to 64"),
            ("Order", "lower-case letter"),
            ("2fast", "lower-case letter"),
            ("my_plugin", "only lower-case"),
            ("my--plugin", "between"),
            ("plugin-", "between"),
            ("test", "reserves"),
            ("../evil", "lower-case letter"),
        ] {
            let error = check_name(bad).unwrap_err().to_string();
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn languages_parse_from_their_names_and_common_aliases() {
        for language in Language::ALL {
            assert_eq!(language.as_str().parse::<Language>(), Ok(language));
        }
        assert_eq!("JavaScript".parse::<Language>(), Ok(Language::Js));
        assert!("cobol".parse::<Language>().unwrap_err().contains("one of rust, c, js"));
    }
}
