//! TOML configuration files.

use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Loads a configuration of type `T` from the TOML file at `path`, or returns
/// `T::default()` when there is no file. Errors name the file and, for syntax
/// and type errors, the line and column, on one line.
///
/// Config structs should use `#[serde(default, deny_unknown_fields)]`, so that
/// a file only lists what it changes and a misspelt key is an error.
pub fn load_config<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).map_err(|err| {
        anyhow::anyhow!(
            "parsing config file {}: {}",
            path.display(),
            describe_toml_error(&text, &err)
        )
    })
}

/// `line L, column C: message` (columns count characters, from 1).
fn describe_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim();
    let Some(before) = err.span().and_then(|span| text.get(..span.start)) else {
        return message.to_owned();
    };
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    format!("line {line}, column {column}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Conf {
        name: String,
        port: u16,
    }

    impl Default for Conf {
        fn default() -> Self {
            Self {
                name: "default".into(),
                port: 1,
            }
        }
    }

    fn load_text(text: &str) -> anyhow::Result<Conf> {
        let dir = std::env::temp_dir().join(format!("daemon_utils_config_{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = dir.join(format!("{}.toml", NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&path, text)?;
        let result = load_config(Some(&path));
        std::fs::remove_file(&path)?;
        result
    }

    #[test]
    fn no_file_gives_defaults() {
        assert_eq!(load_config::<Conf>(None).unwrap(), Conf::default());
    }

    #[test]
    fn file_overrides_only_what_it_lists() {
        let conf = load_text("port = 42\n").unwrap();
        assert_eq!(
            conf,
            Conf {
                name: "default".into(),
                port: 42
            }
        );
    }

    #[test]
    fn missing_file_names_the_file() {
        let err = load_config::<Conf>(Some(Path::new("/nonexistent/x.toml"))).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("reading config file /nonexistent/x.toml"),
            "{msg}"
        );
        assert!(msg.contains("No such file"), "{msg}");
    }

    #[test]
    fn syntax_error_names_file_line_and_column() {
        let msg = format!("{:#}", load_text("name = \"x\"\nport = = 3\n").unwrap_err());
        assert!(msg.starts_with("parsing config file /"), "{msg}");
        assert!(msg.contains("line 2, column "), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn type_and_unknown_key_errors() {
        let msg = format!("{:#}", load_text("port = \"many\"\n").unwrap_err());
        assert!(msg.contains("line 1, column 8"), "{msg}");
        let msg = format!("{:#}", load_text("name = \"x\"\nprot = 3\n").unwrap_err());
        assert!(
            msg.contains("line 2, column 1: unknown field `prot`"),
            "{msg}"
        );
    }
}
