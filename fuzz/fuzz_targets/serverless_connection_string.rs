//! The `Neon-Connection-String` header of SQL over HTTP
//! (`proxy/src/serverless/connection_string.rs`): any text parses or is
//! refused without a panic; a parsed string has a user, no NUL anywhere,
//! and its `Debug` form does not depend on the password.

#![no_main]

use fuzz::serverless_connection_string::ConnectionString;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(parsed) = text.parse::<ConnectionString>() else {
        return;
    };
    assert!(!parsed.user.is_empty());
    for part in [&parsed.user, &parsed.host, &parsed.database] {
        assert!(!part.contains('\0'));
    }
    if let Some(password) = &parsed.password {
        assert!(!password.contains('\0'));
        // The Debug form does not depend on the password.
        let mut other = parsed.clone();
        other.password = Some(format!("{password}-other"));
        assert_eq!(format!("{parsed:?}"), format!("{other:?}"));
    }
});
