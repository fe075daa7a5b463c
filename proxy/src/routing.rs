//! Which endpoint a client connection is for.
//!
//! In order of precedence:
//! 1. the startup packet's `options`: `endpoint=<name>` or `branch=<name>`,
//!    also as `-c endpoint=<name>`, `-cendpoint=<name>` or
//!    `--endpoint=<name>` (the forms PostgreSQL's `options` takes);
//! 2. the first label of the TLS SNI name (`main.localhost` → endpoint
//!    `main`), when the client connected with TLS and sent a name with at
//!    least two labels that is not an IP address;
//! 3. otherwise the default branch of the default tenant.
//!
//! The routing words are removed from `options` before the startup packet
//! is passed on: PostgreSQL would refuse them as unknown settings.

use std::fmt;

/// What the client asked to connect to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Endpoint(String),
    Branch(String),
    /// The default branch of the default tenant.
    Default,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Endpoint(name) => write!(f, "endpoint '{name}'"),
            Target::Branch(name) => write!(f, "branch '{name}'"),
            Target::Default => write!(f, "the default branch"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoutingError {
    #[error("options name more than one target: {0} and {1}")]
    Conflict(Target, Target),
    #[error("empty {0} name in options")]
    EmptyName(&'static str),
    #[error("invalid {kind} name {name:?}: use letters, digits, '-', '_' and '.' only")]
    InvalidName { kind: &'static str, name: String },
    #[error("options end with '-c' and no setting")]
    DanglingSetting,
}

/// The routing decision and the `options` to pass on (`None` when nothing
/// is left of them).
#[derive(Debug, PartialEq, Eq)]
pub struct Routed {
    pub target: Target,
    pub options: Option<String>,
}

/// One whitespace-separated word of `options`: its text as sent (with
/// backslash escapes) and its value (without).
struct Word<'a> {
    raw: &'a str,
    value: String,
}

/// Splits `options` as PostgreSQL does: on whitespace, where a backslash
/// makes the next character part of the word.
fn words(options: &str) -> Vec<Word<'_>> {
    let mut out = Vec::new();
    let mut chars = options.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut value = String::new();
        let mut end = start;
        while let Some(&(i, c)) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            end = i + c.len_utf8();
            if c == '\\' {
                if let Some((j, escaped)) = chars.next() {
                    value.push(escaped);
                    end = j + escaped.len_utf8();
                }
            } else {
                value.push(c);
            }
        }
        out.push(Word {
            raw: &options[start..end],
            value,
        });
    }
    out
}

fn check_name(kind: &'static str, name: &str) -> Result<String, RoutingError> {
    if name.is_empty() {
        return Err(RoutingError::EmptyName(kind));
    }
    let ok = name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return Err(RoutingError::InvalidName {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(name.to_owned())
}

/// The target named by a `name=value` setting, if it is a routing one.
fn setting_target(setting: &str) -> Result<Option<Target>, RoutingError> {
    let Some((name, value)) = setting.split_once('=') else {
        return Ok(None);
    };
    Ok(match name {
        "endpoint" | "endpoint_id" => Some(Target::Endpoint(check_name("endpoint", value)?)),
        "branch" => Some(Target::Branch(check_name("branch", value)?)),
        _ => None,
    })
}

/// The endpoint named by a TLS SNI name: its first label, if the name has
/// at least two labels and is not an IP address.
pub fn sni_endpoint(server_name: &str) -> Option<String> {
    if server_name.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    let (first, rest) = server_name.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    check_name("endpoint", first).ok()
}

/// Decide the target from the startup `options` and the TLS SNI name.
pub fn route(options: Option<&str>, sni: Option<&str>) -> Result<Routed, RoutingError> {
    let mut target: Option<Target> = None;
    let mut kept: Vec<&str> = Vec::new();
    let words = options.map(words).unwrap_or_default();
    let mut i = 0;
    let mut set = |found: Target| match target.take() {
        Some(previous) if previous != found => Err(RoutingError::Conflict(previous, found)),
        _ => {
            target = Some(found);
            Ok(())
        }
    };
    while i < words.len() {
        let word = &words[i];
        // `-c name=value` is two words; `-cname=value` and `--name=value` one.
        let (setting, consumed) = if word.value == "-c" {
            let next = words.get(i + 1).ok_or(RoutingError::DanglingSetting)?;
            (next.value.as_str(), 2)
        } else if let Some(rest) = word.value.strip_prefix("--") {
            (rest, 1)
        } else if let Some(rest) = word.value.strip_prefix("-c") {
            (rest, 1)
        } else {
            (word.value.as_str(), 1)
        };
        match setting_target(setting)? {
            Some(found) => set(found)?,
            None => kept.extend(words[i..i + consumed].iter().map(|w| w.raw)),
        }
        i += consumed;
    }
    let target = match target {
        Some(t) => t,
        None => sni
            .and_then(sni_endpoint)
            .map_or(Target::Default, Target::Endpoint),
    };
    let options = (!kept.is_empty()).then(|| kept.join(" "));
    Ok(Routed { target, options })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(options: &str) -> Target {
        route(Some(options), None).unwrap().target
    }

    #[test]
    fn option_forms() {
        let endpoint = Target::Endpoint("ep1".into());
        let branch = Target::Branch("heikki".into());
        assert_eq!(target("endpoint=ep1"), endpoint);
        assert_eq!(target("-c endpoint=ep1"), endpoint);
        assert_eq!(target("-cendpoint=ep1"), endpoint);
        assert_eq!(target("--endpoint=ep1"), endpoint);
        assert_eq!(target("branch=heikki"), branch);
        assert_eq!(target("  -c   branch=heikki  "), branch);
        assert_eq!(target(""), Target::Default);
        assert_eq!(route(None, None).unwrap().target, Target::Default);
    }

    #[test]
    fn other_options_are_kept() {
        let r = route(
            Some("-c work_mem=64MB branch=b1 -c search_path=a\\ b --geqo=off"),
            None,
        )
        .unwrap();
        assert_eq!(r.target, Target::Branch("b1".into()));
        assert_eq!(
            r.options.as_deref(),
            Some("-c work_mem=64MB -c search_path=a\\ b --geqo=off")
        );
        let r = route(Some("endpoint=e"), None).unwrap();
        assert_eq!(r.options, None);
    }

    #[test]
    fn bad_options() {
        assert!(matches!(
            route(Some("endpoint=a branch=b"), None),
            Err(RoutingError::Conflict(..))
        ));
        assert!(route(Some("endpoint=a endpoint=a"), None).is_ok());
        assert_eq!(
            route(Some("branch="), None),
            Err(RoutingError::EmptyName("branch"))
        );
        assert!(matches!(
            route(Some("endpoint=a/b"), None),
            Err(RoutingError::InvalidName { .. })
        ));
        assert_eq!(route(Some("-c"), None), Err(RoutingError::DanglingSetting));
    }

    #[test]
    fn sni() {
        assert_eq!(
            route(None, Some("main.localtest.me")).unwrap().target,
            Target::Endpoint("main".into())
        );
        // Options win over SNI.
        assert_eq!(
            route(Some("branch=x"), Some("main.localtest.me"))
                .unwrap()
                .target,
            Target::Branch("x".into())
        );
        for name in ["localhost", "127.0.0.1", "::1", "a."] {
            assert_eq!(route(None, Some(name)).unwrap().target, Target::Default);
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        for options in ["\\", "-c\\", "\\\\ -c", "é=ü branch=ok", "--=", "-c ="] {
            let _ = route(Some(options), None);
        }
    }
}
