//! Parses the `Neon-Connection-String` header of the SQL-over-HTTP endpoint:
//! `postgresql://USER[:PASSWORD]@HOST[:PORT][/DATABASE][?KEY=VALUE&...]`.
//!
//! The rules follow libpq's URIs: `postgres://` is accepted too, an IPv6 host
//! goes in brackets, user, password, host, database and query values are
//! percent-decoded (`+` is a literal plus everywhere), the query may set
//! `user`, `password`, `dbname`, `host` and `port` over the URI's own parts,
//! `options` is kept, other keys (libpq's `sslmode`, `channel_binding`, …,
//! and those of tools that share the string, like Prisma's `pgbouncer`) are
//! accepted and ignored, and a repeated key is an error.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A parsed connection string. The password is never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// The role to connect as.
    pub user: String,
    /// `None` when the string has no `:` after the user; `Some("")` for `user:@host`.
    pub password: Option<String>,
    /// The host name or IP address, without IPv6 brackets.
    pub host: String,
    /// The port, when one is given.
    pub port: Option<u16>,
    /// The database; the user name when none is given.
    pub database: String,
    /// The `options` query parameter, decoded.
    pub options: Option<String>,
}

impl fmt::Debug for ConnectionString {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ConnectionString")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("options", &self.options)
            .finish()
    }
}

/// Why a connection string was refused; each message tells the user what to fix.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnectionStringError {
    #[error("the connection string must start with postgresql:// or postgres://")]
    MissingScheme,
    #[error(
        "the connection string names no user: expected \
         postgresql://USER[:PASSWORD]@HOST[:PORT][/DATABASE] \
         (percent-encode any '@', '/', '?' or ':' in the user name or password)"
    )]
    MissingUser,
    #[error("the connection string names no host")]
    MissingHost,
    #[error("the connection string names several hosts; only one is supported")]
    MultipleHosts,
    #[error(
        "the IPv6 address in the connection string must be written as [ADDRESS] or [ADDRESS]:PORT"
    )]
    InvalidIpv6Host,
    #[error("invalid port {0:?} in the connection string: expected a number from 1 to 65535")]
    InvalidPort(String),
    #[error(
        "invalid percent-encoding in the {0} of the connection string: \
         '%' must be followed by two hexadecimal digits"
    )]
    InvalidPercentEncoding(String),
    #[error("the {0} of the connection string is not valid UTF-8 once percent-decoded")]
    InvalidUtf8(String),
    #[error("the {0} of the connection string contains a NUL byte")]
    NulByte(String),
    #[error("the connection string parameter {0:?} has no '=' and value")]
    MissingParameterValue(String),
    #[error("the connection string gives the parameter {0:?} more than once")]
    RepeatedParameter(String),
}

impl FromStr for ConnectionString {
    type Err = ConnectionStringError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse(text)
    }
}

/// Parses a `postgresql://` or `postgres://` connection string.
pub fn parse(text: &str) -> Result<ConnectionString, ConnectionStringError> {
    let rest = strip_scheme(text.trim())?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after_authority) = rest.split_at(authority_end);
    let (path, query) = match after_authority.split_once('?') {
        Some((path, query)) => (path, query),
        None => (after_authority, ""),
    };
    let (userinfo, host_and_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_and_port)) => (Some(userinfo), host_and_port),
        // A raw '/' or '?' in the password: refuse before any part of the
        // password could be taken for a host or port and echoed in an error.
        None if after_authority.contains('@') => return Err(ConnectionStringError::MissingUser),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(userinfo) => parse_userinfo(userinfo)?,
        None => (None, None),
    };
    let (host, port) = parse_host_and_port(host_and_port)?;
    let database = match path.strip_prefix('/') {
        Some(encoded) if !encoded.is_empty() => Some(decode(encoded, "database name")?),
        _ => None,
    };
    let overrides = parse_query(query)?;

    let user = overrides.user.or(user).filter(|user| !user.is_empty());
    let user = user.ok_or(ConnectionStringError::MissingUser)?;
    let host = overrides.host.or(host).filter(|host| !host.is_empty());
    let host = host.ok_or(ConnectionStringError::MissingHost)?;
    let port = match overrides.port {
        Some(port) => parse_port(&port)?,
        None => port,
    };
    let database = overrides
        .dbname
        .or(database)
        .filter(|name| !name.is_empty());
    Ok(ConnectionString {
        database: database.unwrap_or_else(|| user.clone()),
        user,
        password: overrides.password.or(password),
        host,
        port,
        options: overrides.options,
    })
}

fn strip_scheme(text: &str) -> Result<&str, ConnectionStringError> {
    ["postgresql://", "postgres://"]
        .iter()
        .find_map(|scheme| {
            let prefix = text.get(..scheme.len())?;
            if prefix.eq_ignore_ascii_case(scheme) {
                text.get(scheme.len()..)
            } else {
                None
            }
        })
        .ok_or(ConnectionStringError::MissingScheme)
}

type UserAndPassword = (Option<String>, Option<String>);

fn parse_userinfo(userinfo: &str) -> Result<UserAndPassword, ConnectionStringError> {
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    let user = decode(user, "user name")?;
    let password = password
        .map(|password| decode(password, "password"))
        .transpose()?;
    Ok((Some(user), password))
}

fn parse_host_and_port(text: &str) -> Result<(Option<String>, Option<u16>), ConnectionStringError> {
    if text.contains(',') {
        return Err(ConnectionStringError::MultipleHosts);
    }
    let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
        let (address, after) = bracketed
            .split_once(']')
            .ok_or(ConnectionStringError::InvalidIpv6Host)?;
        if address.is_empty() || address.contains('[') {
            return Err(ConnectionStringError::InvalidIpv6Host);
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or(ConnectionStringError::InvalidIpv6Host)?,
            ),
        };
        (address, port)
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.contains(['[', ']']) {
        return Err(ConnectionStringError::InvalidIpv6Host);
    }
    let port = match port {
        Some(port) => parse_port(port)?,
        None => None,
    };
    Ok((Some(decode(host, "host")?), port))
}

/// An empty port means the default one.
fn parse_port(text: &str) -> Result<Option<u16>, ConnectionStringError> {
    if text.is_empty() {
        return Ok(None);
    }
    let invalid = || ConnectionStringError::InvalidPort(text.to_owned());
    if !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid()),
        Ok(port) => Ok(Some(port)),
    }
}

/// The query parameters that matter here.
#[derive(Default)]
struct QueryParameters {
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    host: Option<String>,
    port: Option<String>,
    options: Option<String>,
}

fn parse_query(query: &str) -> Result<QueryParameters, ConnectionStringError> {
    let mut parameters = QueryParameters::default();
    let mut seen: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let Some((raw_key, raw_value)) = pair.split_once('=') else {
            let key = decode(pair, "parameter name")?;
            return Err(ConnectionStringError::MissingParameterValue(key));
        };
        let key = decode(raw_key, "parameter name")?;
        let value = decode(raw_value, &format!("value of parameter {key:?}"))?;
        if seen.contains(&key) {
            return Err(ConnectionStringError::RepeatedParameter(key));
        }
        let slot = match key.as_str() {
            "user" => &mut parameters.user,
            "password" => &mut parameters.password,
            "dbname" => &mut parameters.dbname,
            "host" => &mut parameters.host,
            "port" => &mut parameters.port,
            "options" => &mut parameters.options,
            // libpq's other keywords (sslmode, channel_binding, …) and
            // those of tools that share the string (Prisma's pgbouncer,
            // schema, …) have no effect here.
            _ => {
                seen.push(key);
                continue;
            }
        };
        if key == "host" && value.contains(',') {
            return Err(ConnectionStringError::MultipleHosts);
        }
        *slot = Some(value);
        seen.push(key);
    }
    Ok(parameters)
}

/// Percent-decodes one part of the string; `part` names it in errors.
fn decode(raw: &str, part: &str) -> Result<String, ConnectionStringError> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        if byte != b'%' {
            decoded.push(byte);
            index += 1;
            continue;
        }
        let high = bytes.get(index + 1).and_then(hex_digit_value);
        let low = bytes.get(index + 2).and_then(hex_digit_value);
        let (Some(high), Some(low)) = (high, low) else {
            return Err(ConnectionStringError::InvalidPercentEncoding(
                part.to_owned(),
            ));
        };
        decoded.push(high << 4 | low);
        index += 3;
    }
    let text = String::from_utf8(decoded)
        .map_err(|_| ConnectionStringError::InvalidUtf8(part.to_owned()))?;
    if text.contains('\0') {
        return Err(ConnectionStringError::NulByte(part.to_owned()));
    }
    Ok(text)
}

fn hex_digit_value(byte: &u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnectionStringError as E;

    fn ok(text: &str) -> ConnectionString {
        match parse(text) {
            Ok(parsed) => parsed,
            Err(error) => panic!("{text:?}: {error}"),
        }
    }

    fn err(text: &str) -> ConnectionStringError {
        match parse(text) {
            Ok(parsed) => panic!("{text:?} parsed as {parsed:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn full_string() {
        let parsed =
            ok("postgresql://alice:secret@ep-1.localtest.me:5432/main?options=endpoint%3Dep-1");
        assert_eq!(
            parsed,
            ConnectionString {
                user: "alice".to_owned(),
                password: Some("secret".to_owned()),
                host: "ep-1.localtest.me".to_owned(),
                port: Some(5432),
                database: "main".to_owned(),
                options: Some("endpoint=ep-1".to_owned()),
            }
        );
        assert_eq!(
            parsed.clone(),
            "postgresql://alice:secret@ep-1.localtest.me:5432/main?options=endpoint%3Dep-1"
                .parse()
                .unwrap()
        );
    }

    #[test]
    fn schemes() {
        assert_eq!(ok("postgres://u@h").user, "u");
        assert_eq!(ok("PostgreSQL://u@h").host, "h");
        assert_eq!(ok("  postgres://u@h\t").database, "u");
        for bad in [
            "",
            "http://u@h",
            "postgresql:/u@h",
            "postgresql:",
            "pg://u@h",
            "é",
        ] {
            assert_eq!(err(bad), E::MissingScheme, "{bad:?}");
        }
        assert_eq!(
            E::MissingScheme.to_string(),
            "the connection string must start with postgresql:// or postgres://"
        );
    }

    #[test]
    fn user_and_password() {
        let parsed = ok("postgresql://u@h");
        assert_eq!((parsed.user.as_str(), parsed.password), ("u", None));
        assert_eq!(ok("postgresql://u:@h").password, Some(String::new()));
        assert_eq!(ok("postgresql://u:a:b@h").password.as_deref(), Some("a:b"));
        let parsed = ok("postgresql://us%40er%3A:p%40ss%2Fw+rd%25@h");
        assert_eq!(parsed.user, "us@er:");
        assert_eq!(parsed.password.as_deref(), Some("p@ss/w+rd%"));
        assert_eq!(ok("postgresql://a@b@h").user, "a@b");
        assert_eq!(ok("postgresql://%C3%A9l%C3%A8ve@h").user, "élève");
        for bad in [
            "postgresql://h/db",
            "postgresql://@h",
            "postgresql://:pw@h",
            "postgresql://",
        ] {
            assert_eq!(err(bad), E::MissingUser, "{bad:?}");
        }
        let unencoded = [
            "postgresql://u:pa/ss@h/db",
            "postgresql://u:pa?ss@h",
            "postgresql://u:p/:1@h",
        ];
        for bad in unencoded {
            assert_eq!(err(bad), E::MissingUser, "{bad:?}");
        }
        let message = E::MissingUser.to_string();
        assert!(message.starts_with("the connection string names no user"));
    }

    #[test]
    fn hosts_and_ports() {
        let parsed = ok("postgresql://u@[::1]:5432/db");
        assert_eq!((parsed.host.as_str(), parsed.port), ("::1", Some(5432)));
        assert_eq!(ok("postgresql://u@[fe80::1%25eth0]").host, "fe80::1%eth0");
        assert_eq!(ok("postgresql://u@127.0.0.1:1").port, Some(1));
        assert_eq!(ok("postgresql://u@h:65535").port, Some(65535));
        assert_eq!(ok("postgresql://u@h:/db").port, None);
        for bad in [
            "0",
            "65536",
            "abc",
            "+1",
            "-1",
            "1:2",
            "99999999999999999999",
        ] {
            let text = format!("postgresql://u@h:{bad}/db");
            assert_eq!(err(&text), E::InvalidPort(bad.to_owned()), "{text}");
        }
        assert!(E::InvalidPort("x".to_owned())
            .to_string()
            .starts_with("invalid port"));
        for bad in ["[::1", "[]", "[::1]x", "[::1]]", "[[::1]", "h]"] {
            let text = format!("postgresql://u@{bad}/db");
            assert_eq!(err(&text), E::InvalidIpv6Host, "{text}");
        }
        assert_eq!(err("postgresql://u@:5432/db"), E::MissingHost);
        assert_eq!(err("postgresql://u@/db"), E::MissingHost);
        assert_eq!(err("postgresql://u@h1,h2/db"), E::MultipleHosts);
        assert_eq!(err("postgresql://u@h1:1,h2:2/db"), E::MultipleHosts);
    }

    #[test]
    fn database() {
        assert_eq!(ok("postgresql://u@h").database, "u");
        assert_eq!(ok("postgresql://u@h/").database, "u");
        assert_eq!(ok("postgresql://u@h?sslmode=require").database, "u");
        assert_eq!(ok("postgresql://u@h/my%20db+x").database, "my db+x");
        assert_eq!(ok("postgresql://u@h/a/b").database, "a/b");
    }

    #[test]
    fn query_parameters() {
        let parsed = ok(
            "postgresql://u@h/db?sslmode=require&application_name=app&connect_timeout=10\
                         &channel_binding=disable&&options=-c%20search_path%3Dx+y&",
        );
        assert_eq!(parsed.options.as_deref(), Some("-c search_path=x+y"));
        assert_eq!(ok("postgresql://u@h").options, None);
        let raw_equals = ok("postgresql://u@h?options=endpoint=ep-1").options;
        assert_eq!(raw_equals.as_deref(), Some("endpoint=ep-1"));
        assert_eq!(ok("postgresql://u@h?options=").options, Some(String::new()));
        assert_eq!(
            err("postgresql://u@h?sslmode=a&sslmode=b"),
            E::RepeatedParameter("sslmode".to_owned())
        );
        assert_eq!(
            err("postgresql://u@h?options=a&options=b"),
            E::RepeatedParameter("options".to_owned())
        );
        assert_eq!(
            parse("postgresql://u@h?pgbouncer=true&schema=app&options=branch%3Db")
                .unwrap()
                .options
                .as_deref(),
            Some("branch=b")
        );
        assert_eq!(
            err("postgresql://u@h?sslmode"),
            E::MissingParameterValue("sslmode".to_owned())
        );
        let parsed = ok("postgresql://u:p@h:1/d?user=v&password=q&dbname=e&host=g&port=2");
        assert_eq!(
            (
                parsed.user.as_str(),
                parsed.password.as_deref(),
                parsed.host.as_str()
            ),
            ("v", Some("q"), "g")
        );
        assert_eq!((parsed.port, parsed.database.as_str()), (Some(2), "e"));
        let parsed = ok("postgresql:///?user=v&host=g");
        assert_eq!((parsed.user.as_str(), parsed.host.as_str()), ("v", "g"));
        assert_eq!(parsed.database, "v");
        assert_eq!(
            err("postgresql://u@h?port=x"),
            E::InvalidPort("x".to_owned())
        );
        assert_eq!(err("postgresql://u@h?host=a,b"), E::MultipleHosts);
    }

    #[test]
    fn decoding_errors() {
        let part = |name: &str| name.to_owned();
        for bad in ["%", "%4", "%zz", "%%41", "%4g"] {
            assert_eq!(
                err(&format!("postgresql://u{bad}@h")),
                E::InvalidPercentEncoding(part("user name"))
            );
            assert_eq!(
                err(&format!("postgresql://u:{bad}@h")),
                E::InvalidPercentEncoding(part("password"))
            );
            assert_eq!(
                err(&format!("postgresql://u@h/{bad}")),
                E::InvalidPercentEncoding(part("database name"))
            );
            assert_eq!(
                err(&format!("postgresql://u@h?options={bad}")),
                E::InvalidPercentEncoding(part("value of parameter \"options\""))
            );
            assert_eq!(
                err(&format!("postgresql://u@h?{bad}=1")),
                E::InvalidPercentEncoding(part("parameter name"))
            );
        }
        assert_eq!(
            err("postgresql://u%ff@h"),
            E::InvalidUtf8(part("user name"))
        );
        assert_eq!(
            err("postgresql://u:%c3@h"),
            E::InvalidUtf8(part("password"))
        );
        assert_eq!(err("postgresql://u%00@h"), E::NulByte(part("user name")));
        assert_eq!(
            err("postgresql://u@h/d%00"),
            E::NulByte(part("database name"))
        );
        assert_eq!(
            err("postgresql://u@h?options=%00"),
            E::NulByte(part("value of parameter \"options\""))
        );
        assert_eq!(err("postgresql://u@h%00"), E::NulByte(part("host")));
        assert!(E::InvalidPercentEncoding(part("password"))
            .to_string()
            .starts_with("invalid percent-encoding in the password"));
    }

    #[test]
    fn debug_hides_the_password() {
        let printed = format!("{:?}", ok("postgresql://u:hunter2@h/db"));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("***"), "{printed}");
        let printed = format!("{:?}", ok("postgresql://u@h/db"));
        assert!(printed.contains("password: None"), "{printed}");
    }

    #[test]
    fn odd_input_never_panics() {
        let alphabet: Vec<char> = "@:/?=&%[],a1é".chars().collect();
        let mut frontier = vec![String::new()];
        for _ in 0..4 {
            let mut next = Vec::new();
            for prefix in &frontier {
                for c in &alphabet {
                    let candidate = format!("{prefix}{c}");
                    let _ = parse(&candidate);
                    let _ = parse(&format!("postgresql://{candidate}"));
                    let _ = parse(&format!("postgres://u:p@{candidate}"));
                    next.push(candidate);
                }
            }
            frontier = next;
        }
    }
}
