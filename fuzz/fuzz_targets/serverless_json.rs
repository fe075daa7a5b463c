//! SQL over HTTP's value conversions (`proxy/src/serverless/json.rs`).
//!
//! Input: a mode byte, then
//! * mode even: a type index byte and PostgreSQL text: `text_to_json`
//!   under that type (raw and not) and `parse_array_literal` must not
//!   panic, and raw output is the text itself;
//! * mode odd: JSON: `json_to_param` of it; when it is an array, the
//!   literal of a uniform array (sub-arrays or elements at each level)
//!   parses back with as many elements.

#![no_main]

use fuzz::serverless_json::{
    json_to_param, parse_array_literal, text_to_json, MAX_ARRAY_DIMENSIONS,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Scalars, arrays of them, box and its array (`;` delimiter), unknown.
const TYPES: &[u32] = &[
    16, 20, 21, 23, 25, 114, 700, 701, 1700, 3802, 1000, 1005, 1007, 1009, 1016, 1021, 1022, 199,
    3807, 603, 1020, 0, 123_456,
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Some((&index, text)) = rest.split_first() else {
            return;
        };
        let Ok(text) = std::str::from_utf8(text) else {
            return;
        };
        let type_oid = TYPES[usize::from(index) % TYPES.len()];
        assert_eq!(
            text_to_json(type_oid, Some(text), true),
            Value::String(text.to_owned())
        );
        let _ = text_to_json(type_oid, Some(text), false);
        assert_eq!(text_to_json(type_oid, None, false), Value::Null);
        let _ = parse_array_literal(text, b',');
        let _ = parse_array_literal(text, b';');
        return;
    }
    let Ok(value) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    let param = json_to_param(&value);
    assert_eq!(param.is_none(), value.is_null());
    if let (Value::Array(items), Some(literal)) = (&value, &param) {
        if !uniform(&value) || depth(&value) > MAX_ARRAY_DIMENSIONS {
            // Elements beside sub-arrays, or more dimensions than
            // PostgreSQL allows: no PostgreSQL array is like that.
            return;
        }
        let parsed = parse_array_literal(literal, b',')
            .unwrap_or_else(|e| panic!("{literal:?} does not parse back: {e}"));
        assert_eq!(parsed.len(), items.len(), "{literal:?}");
    }
});

/// An array whose levels each hold only sub-arrays or only elements.
fn uniform(value: &Value) -> bool {
    let Value::Array(items) = value else {
        return true;
    };
    let arrays = items.iter().filter(|v| v.is_array()).count();
    (arrays == 0 || arrays == items.len()) && items.iter().all(uniform)
}

/// How deep arrays nest in `value`.
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
