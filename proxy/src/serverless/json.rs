//! Conversions between PostgreSQL text-format values and JSON for the
//! SQL-over-HTTP endpoint.
//!
//! Responses: [`text_to_json`] maps one column value (its type OID and its
//! text, or NULL) to JSON — numbers for int2/int4/float4/float8, booleans,
//! parsed json/jsonb, nested arrays for array types, strings for the rest.
//! Requests: [`json_to_param`] turns one JSON parameter into the text that is
//! sent to PostgreSQL, writing JSON arrays as PostgreSQL array literals.

use std::fmt;

use serde_json::{Number, Value};

/// PostgreSQL allows arrays of at most this many dimensions (MAXDIM).
pub const MAX_ARRAY_DIMENSIONS: usize = 6;

const BOOL: u32 = 16;
const INT2: u32 = 21;
const INT4: u32 = 23;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const BOX: u32 = 603;
const JSONB: u32 = 3802;

/// Built-in array types: (array type OID, element type OID).
#[rustfmt::skip]
const ARRAY_TYPES: &[(u32, u32)] = &[
    (1000, BOOL), (1001, 17), (1002, 18), (1003, 19), // bool bytea char name
    (1016, 20), (1005, INT2), (1006, 22), (1007, INT4), // int8 int2 int2vector int4
    (1008, 24), (1009, 25), (1028, 26), (1010, 27), // regproc text oid tid
    (1011, 28), (1012, 29), (1013, 30), (199, JSON), // xid cid oidvector json
    (143, 142), (271, 5069), (1017, 600), (1018, 601), // xml xid8 point lseg
    (1019, 602), (1020, BOX), (1027, 604), (629, 628), // path box polygon line
    (1021, FLOAT4), (1022, FLOAT8), (719, 718), (791, 790), // float4 float8 circle money
    (1040, 829), (1041, 869), (651, 650), (775, 774), // macaddr inet cidr macaddr8
    (1034, 1033), (1014, 1042), (1015, 1043), (1182, 1082), // aclitem bpchar varchar date
    (1183, 1083), (1115, 1114), (1185, 1184), (1187, 1186), // time timestamp timestamptz interval
    (1270, 1266), (1561, 1560), (1563, 1562), (1231, 1700), // timetz bit varbit numeric
    (2201, 1790), (2207, 2202), (2208, 2203), (2209, 2204), // refcursor regprocedure regoper(ator)
    (2210, 2205), (4192, 4191), (2211, 2206), (4097, 4096), // regclass -collation -type -role
    (4090, 4089), (2951, 2950), (3221, 3220), (3643, 3614), // regnamespace uuid pg_lsn tsvector
    (3645, 3615), (3735, 3734), (3770, 3769), (3807, JSONB), // tsquery regconfig regdict jsonb
    (4073, 4072), (2949, 2970), (5039, 5038), // jsonpath txid_snapshot pg_snapshot
    (3905, 3904), (3907, 3906), (3909, 3908), (3911, 3910), // int4range numrange tsrange tstzrange
    (3913, 3912), (3927, 3926), (2287, 2249), (1263, 2275), // daterange int8range record cstring
    (6150, 4451), (6151, 4532), (6152, 4533), (6153, 4534), // int4/num/ts/tstz multirange
    (6155, 4535), (6157, 4536), // datemultirange int8multirange
];

/// The element type and element delimiter of a built-in array type.
fn array_element_type(type_oid: u32) -> Option<(u32, u8)> {
    let (_, element) = ARRAY_TYPES.iter().find(|(array, _)| *array == type_oid)?;
    let delimiter = if *element == BOX { b';' } else { b',' };
    Some((*element, delimiter))
}

/// Maps one column value in PostgreSQL text format to JSON.
///
/// NULL is `null`. With `raw_text` every other value is its text as a JSON
/// string. Otherwise int2/int4/float4/float8 become numbers (NaN and the
/// infinities stay strings), bool becomes `true`/`false`, json/jsonb are
/// parsed, built-in array types become nested JSON arrays whose elements are
/// mapped by the element type, and everything else stays a string. A value
/// that does not parse as its type claims is returned as a string.
pub fn text_to_json(type_oid: u32, text: Option<&str>, raw_text: bool) -> Value {
    let Some(text) = text else {
        return Value::Null;
    };
    if raw_text {
        return Value::String(text.to_owned());
    }
    match array_element_type(type_oid) {
        Some((element_oid, delimiter)) => match parse_array_literal(text, delimiter) {
            Ok(elements) => elements_to_json(&elements, element_oid),
            Err(_) => Value::String(text.to_owned()),
        },
        None => scalar_to_json(type_oid, text),
    }
}

fn scalar_to_json(type_oid: u32, text: &str) -> Value {
    let converted = match type_oid {
        INT2 | INT4 => text.parse::<i64>().ok().map(Value::from),
        FLOAT4 | FLOAT8 => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number),
        BOOL => match text {
            "t" => Some(Value::Bool(true)),
            "f" => Some(Value::Bool(false)),
            _ => None,
        },
        JSON | JSONB => serde_json::from_str(text).ok(),
        _ => None,
    };
    converted.unwrap_or_else(|| Value::String(text.to_owned()))
}

fn elements_to_json(elements: &[ArrayElement], element_oid: u32) -> Value {
    let mapped = elements
        .iter()
        .map(|element| match element {
            ArrayElement::Null => Value::Null,
            ArrayElement::Text(text) => scalar_to_json(element_oid, text),
            ArrayElement::Array(nested) => elements_to_json(nested, element_oid),
        })
        .collect();
    Value::Array(mapped)
}

/// One element of a parsed PostgreSQL array literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArrayElement {
    /// An unquoted `NULL`.
    Null,
    /// An element's text, quotes and escapes removed.
    Text(String),
    /// A sub-array of a multi-dimensional array.
    Array(Vec<ArrayElement>),
}

/// Why a PostgreSQL array literal could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArrayParseError {
    /// Byte offset into the literal where the problem was found.
    pub position: usize,
    /// What is wrong there.
    pub reason: &'static str,
}

const UNEXPECTED_END: &str = "unexpected end";
const UNEXPECTED_CHARACTER: &str = "unexpected character";
const EMPTY_ELEMENT: &str = "empty unquoted element";
const TOO_MANY_DIMENSIONS: &str = "too many dimensions";
const MIXED_NESTING: &str = "elements and sub-arrays mixed at one level";
const INVALID_UTF8: &str = "element not valid UTF-8";

impl fmt::Display for ArrayParseError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { position, reason } = self;
        write!(
            formatter,
            "{reason} at byte {position} of the array literal"
        )
    }
}

impl std::error::Error for ArrayParseError {}

/// Parses a PostgreSQL array literal such as `{1,"a b",NULL}`,
/// `{{1,2},{3,4}}` or `[0:1]={1,2}` (the dimension decoration is skipped)
/// into its top-level elements. `delimiter` separates elements: `,` for every
/// built-in type except box, which uses `;`.
pub fn parse_array_literal(
    text: &str,
    delimiter: u8,
) -> Result<Vec<ArrayElement>, ArrayParseError> {
    let mut parser = ArrayParser {
        bytes: text.as_bytes(),
        position: 0,
        delimiter,
    };
    parser.skip_whitespace();
    if parser.peek() == Some(b'[') {
        parser.skip_dimension_decoration()?;
        parser.skip_whitespace();
    }
    let elements = parser.parse_array(1)?;
    parser.skip_whitespace();
    match parser.peek() {
        None => Ok(elements),
        Some(_) => Err(parser.unexpected()),
    }
}

/// PostgreSQL's array whitespace: space, \t, \n, \r, \v, \f.
fn is_array_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

struct ArrayParser<'a> {
    bytes: &'a [u8],
    position: usize,
    delimiter: u8,
}

impl ArrayParser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    /// Returns the current byte and moves past it.
    fn next(&mut self) -> Result<u8, ArrayParseError> {
        let byte = self.peek().ok_or_else(|| self.error_here(UNEXPECTED_END))?;
        self.position += 1;
        Ok(byte)
    }

    fn error_here(&self, reason: &'static str) -> ArrayParseError {
        ArrayParseError {
            position: self.position,
            reason,
        }
    }

    fn unexpected(&self) -> ArrayParseError {
        match self.peek() {
            None => self.error_here(UNEXPECTED_END),
            Some(_) => self.error_here(UNEXPECTED_CHARACTER),
        }
    }

    fn expect(&mut self, wanted: u8) -> Result<(), ArrayParseError> {
        if self.peek() != Some(wanted) {
            return Err(self.unexpected());
        }
        self.position += 1;
        Ok(())
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(is_array_whitespace) {
            self.position += 1;
        }
    }

    /// Skips `[lower:upper]...=`, checking only its shape.
    fn skip_dimension_decoration(&mut self) -> Result<(), ArrayParseError> {
        while self.peek() == Some(b'[') {
            self.position += 1;
            let start = self.position;
            while self
                .peek()
                .is_some_and(|byte| byte.is_ascii_digit() || matches!(byte, b'+' | b'-' | b':'))
            {
                self.position += 1;
            }
            if self.position == start {
                return Err(self.unexpected());
            }
            self.expect(b']')?;
            self.skip_whitespace();
        }
        self.expect(b'=')
    }

    /// Parses `{...}` starting at its opening brace; `dimension` counts the
    /// braces open so far, this one included.
    fn parse_array(&mut self, dimension: usize) -> Result<Vec<ArrayElement>, ArrayParseError> {
        if dimension > MAX_ARRAY_DIMENSIONS {
            return Err(self.error_here(TOO_MANY_DIMENSIONS));
        }
        self.expect(b'{')?;
        let mut elements = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.position += 1;
            return Ok(elements);
        }
        loop {
            self.skip_whitespace();
            let start = self.position;
            let element = match self.peek() {
                Some(b'{') => ArrayElement::Array(self.parse_array(dimension + 1)?),
                _ => self.parse_scalar()?,
            };
            let nested = matches!(element, ArrayElement::Array(_));
            if elements
                .first()
                .is_some_and(|first| matches!(first, ArrayElement::Array(_)) != nested)
            {
                let reason = MIXED_NESTING;
                return Err(ArrayParseError {
                    position: start,
                    reason,
                });
            }
            elements.push(element);
            self.skip_whitespace();
            match self.next()? {
                b'}' => return Ok(elements),
                byte if byte == self.delimiter => {}
                _ => {
                    self.position -= 1;
                    return Err(self.unexpected());
                }
            }
        }
    }

    fn parse_scalar(&mut self) -> Result<ArrayElement, ArrayParseError> {
        if self.peek() == Some(b'"') {
            self.position += 1;
            return self.parse_quoted_rest().map(ArrayElement::Text);
        }
        self.parse_unquoted()
    }

    /// Reads a quoted element after its opening quote, through its closing one.
    fn parse_quoted_rest(&mut self) -> Result<String, ArrayParseError> {
        let mut buffer = Vec::new();
        loop {
            match self.next()? {
                b'"' => break,
                b'\\' => buffer.push(self.next()?),
                byte => buffer.push(byte),
            }
        }
        String::from_utf8(buffer).map_err(|_| self.error_here(INVALID_UTF8))
    }

    /// Reads an unquoted element up to the delimiter or closing brace; its
    /// trailing whitespace is dropped unless escaped.
    fn parse_unquoted(&mut self) -> Result<ArrayElement, ArrayParseError> {
        let start = self.position;
        let mut buffer = Vec::new();
        let mut significant_length = 0;
        let mut escaped = false;
        while let Some(byte) = self.peek() {
            if byte == self.delimiter || byte == b'}' {
                break;
            }
            match byte {
                b'"' | b'{' => return Err(self.unexpected()),
                b'\\' => {
                    self.position += 1;
                    buffer.push(self.next()?);
                    escaped = true;
                    significant_length = buffer.len();
                    continue;
                }
                _ => buffer.push(byte),
            }
            if !is_array_whitespace(byte) {
                significant_length = buffer.len();
            }
            self.position += 1;
        }
        buffer.truncate(significant_length);
        if buffer.is_empty() && !escaped {
            let reason = EMPTY_ELEMENT;
            return Err(ArrayParseError {
                position: start,
                reason,
            });
        }
        if !escaped && buffer.eq_ignore_ascii_case(b"NULL") {
            return Ok(ArrayElement::Null);
        }
        String::from_utf8(buffer)
            .map(ArrayElement::Text)
            .map_err(|_| self.error_here(INVALID_UTF8))
    }
}

/// Turns one JSON request parameter into the text sent to PostgreSQL:
/// `null` is NULL (`None`), a string is sent as is, numbers and booleans as
/// their text, an array as a PostgreSQL array literal and an object as its
/// JSON text.
pub fn json_to_param(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Array(items) => {
            let mut literal = String::new();
            write_array_literal(items, &mut literal);
            Some(literal)
        }
        Value::Object(_) => Some(value.to_string()),
    }
}

fn write_array_literal(items: &[Value], out: &mut String) {
    out.push('{');
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        match item {
            Value::Null => out.push_str("NULL"),
            Value::Array(nested) => write_array_literal(nested, out),
            Value::String(text) => write_array_element(text, out),
            Value::Number(number) => write_array_element(&number.to_string(), out),
            Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
            Value::Object(_) => write_quoted(&item.to_string(), out),
        }
    }
    out.push('}');
}

fn write_array_element(text: &str, out: &mut String) {
    let needs_quotes = text.is_empty()
        || text.eq_ignore_ascii_case("NULL")
        || text
            .chars()
            .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_whitespace());
    if needs_quotes {
        write_quoted(text, out);
    } else {
        out.push_str(text);
    }
}

fn write_quoted(text: &str, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text(value: &str) -> ArrayElement {
        ArrayElement::Text(value.to_owned())
    }

    fn check_all(cases: &[(u32, &str, Value)]) {
        for (type_oid, input, expected) in cases {
            let actual = text_to_json(*type_oid, Some(input), false);
            assert_eq!(&actual, expected, "type {type_oid}, text {input:?}");
        }
    }

    #[test]
    fn null_and_raw_text() {
        assert_eq!(text_to_json(INT4, None, false), Value::Null);
        assert_eq!(text_to_json(INT4, None, true), Value::Null);
        for (type_oid, input) in [(INT4, "42"), (BOOL, "t"), (JSONB, "{}"), (1007, "{1,2}")] {
            assert_eq!(text_to_json(type_oid, Some(input), true), json!(input));
        }
    }

    #[test]
    fn scalars() {
        check_all(&[
            (INT2, "-32768", json!(-32768)),
            (INT4, "2147483647", json!(2147483647)),
            (INT4, "x", json!("x")),
            (FLOAT8, "1.5", json!(1.5)),
            (FLOAT4, "1e+20", json!(1e20)),
            (FLOAT8, "NaN", json!("NaN")),
            (FLOAT8, "Infinity", json!("Infinity")),
            (FLOAT4, "-Infinity", json!("-Infinity")),
            (FLOAT8, "1e400", json!("1e400")),
            // int8, numeric and oid stay strings: JSON numbers may lose precision.
            (20, "9007199254740993", json!("9007199254740993")),
            (1700, "1.10", json!("1.10")),
            (26, "1259", json!("1259")),
            (BOOL, "t", json!(true)),
            (BOOL, "f", json!(false)),
            (BOOL, "maybe", json!("maybe")),
            (JSON, "{\"a\": [1, null]}", json!({"a": [1, null]})),
            (JSONB, "\"s\"", json!("s")),
            (JSONB, "{oops", json!("{oops")),
            (25, "hello", json!("hello")),
            (17, "\\x00ff", json!("\\x00ff")),
            (1082, "2024-01-02", json!("2024-01-02")),
        ]);
        let negative_zero = text_to_json(FLOAT8, Some("-0"), false);
        assert!(negative_zero.is_number());
        assert_eq!(negative_zero.as_f64(), Some(0.0));
    }

    #[test]
    fn arrays_map_elements_by_type() {
        check_all(&[
            (1007, "{1,2,NULL}", json!([1, 2, null])),
            (1000, "{t,f}", json!([true, false])),
            (
                1022,
                "{1.5,NaN,-Infinity}",
                json!([1.5, "NaN", "-Infinity"]),
            ),
            (1016, "{1,2}", json!(["1", "2"])),
            (
                3807,
                r#"{"{\"a\": 1}",NULL,"[2]"}"#,
                json!([{"a": 1}, null, [2]]),
            ),
            (199, r#"{"true",null}"#, json!([true, null])),
            (
                1009,
                r#"{"a b","x\"y","NULL",NULL,nUlL}"#,
                json!(["a b", "x\"y", "NULL", null, null]),
            ),
            (1007, "{{1,2},{3,4}}", json!([[1, 2], [3, 4]])),
            (1005, "[0:1]={1,2}", json!([1, 2])),
            (1009, "{}", json!([])),
            (
                1020,
                "{(1,1),(0,0);(3,3),(2,2)}",
                json!(["(1,1),(0,0)", "(3,3),(2,2)"]),
            ),
            // Malformed literals fall back to the text.
            (1007, "{1,2", json!("{1,2")),
        ]);
    }

    #[test]
    fn array_table_covers_the_common_types() {
        let required = [
            1000, 1005, 1007, 1016, 1009, 1015, 1014, 1021, 1022, 1231, 199, 3807, 2951, 1182,
            1115, 1185, 1001, 1028, 1003, 1002, 1183, 1187, 1020,
        ];
        for array in required {
            assert!(array_element_type(array).is_some(), "{array}");
        }
        assert_eq!(array_element_type(1020), Some((BOX, b';')));
        assert_eq!(array_element_type(3807), Some((JSONB, b',')));
        let mut arrays: Vec<u32> = ARRAY_TYPES.iter().map(|(array, _)| *array).collect();
        arrays.sort_unstable();
        arrays.dedup();
        assert_eq!(arrays.len(), ARRAY_TYPES.len(), "duplicate array OIDs");
    }

    #[test]
    fn parser_handles_whitespace_and_escapes() {
        let parsed = parse_array_literal(" { a b ,\"q\" , c\\ , \\N\\ULL } ", b',');
        let expected = vec![text("a b"), text("q"), text("c "), text("NULL")];
        assert_eq!(parsed, Ok(expected));
        assert_eq!(parse_array_literal("{ }", b','), Ok(vec![]));
        assert_eq!(parse_array_literal("{\"\"}", b','), Ok(vec![text("")]));
        assert_eq!(
            parse_array_literal("[1:2][3:4]={{1,2},{3,4}}", b','),
            parse_array_literal("{{1,2},{3,4}}", b',')
        );
        let accented = parse_array_literal("{\"é\\ü\"}", b',');
        assert_eq!(accented, Ok(vec![text("éü")]));
    }

    #[test]
    fn parser_rejects_malformed_literals() {
        let malformed = r#"1 { } {1 {1,} {,1} {1,,2} {1}x {"a"b} {a"b} {1,{2}} {{1},2}
            {"a} {a\ [1:2]{1} []={1} [1:2=]{1} {{1}"#;
        for bad in malformed.split_whitespace().chain([""]) {
            assert!(parse_array_literal(bad, b',').is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn parser_bounds_dimensions() {
        let six = format!("{}1{}", "{".repeat(6), "}".repeat(6));
        assert!(parse_array_literal(&six, b',').is_ok());
        let seven = format!("{}1{}", "{".repeat(7), "}".repeat(7));
        let error = parse_array_literal(&seven, b',').expect_err("7 dimensions");
        assert_eq!((error.position, error.reason), (6, TOO_MANY_DIMENSIONS));
        let message = "too many dimensions at byte 6 of the array literal";
        assert_eq!(error.to_string(), message);
        let deep = "{".repeat(100_000);
        assert!(parse_array_literal(&deep, b',').is_err());
    }

    #[test]
    fn params_as_text() {
        assert_eq!(json_to_param(&json!(null)), None);
        let cases = [
            (json!("a b"), "a b"),
            (json!(42), "42"),
            (json!(-1.5), "-1.5"),
            (json!(true), "true"),
            (json!(false), "false"),
            (json!({"a": 1}), r#"{"a":1}"#),
            (json!([]), "{}"),
            (json!([1, null, "x", true, [2]]), "{1,NULL,x,true,{2}}"),
            (
                json!(["", "a b", "null", "{", "}", ","]),
                r#"{"","a b","null","{","}",","}"#,
            ),
            (
                json!(["\"", "\\", "\t", "ok"]),
                "{\"\\\"\",\"\\\\\",\"\t\",ok}",
            ),
            (json!([{"k": "v"}]), r#"{"{\"k\":\"v\"}"}"#),
        ];
        for (value, expected) in cases {
            assert_eq!(json_to_param(&value).as_deref(), Some(expected), "{value}");
        }
    }

    /// What parsing json_to_param's output should give back.
    fn expected_elements(items: &[Value]) -> Vec<ArrayElement> {
        items
            .iter()
            .map(|item| match item {
                Value::Null => ArrayElement::Null,
                Value::Array(nested) => ArrayElement::Array(expected_elements(nested)),
                Value::String(text) => ArrayElement::Text(text.clone()),
                other => ArrayElement::Text(other.to_string()),
            })
            .collect()
    }

    #[test]
    fn params_round_trip_through_the_parser() {
        let cases = [
            json!([]),
            json!([1, 2.5, -3]),
            json!([null, "NULL", "Null", "nullish", ""]),
            json!(["a b", " lead", "trail ", "x\"y", "back\\slash", "{}", "a,b"]),
            json!(["é ü", "line\nbreak", "tab\there", "\u{b}vt", "\u{a0}nbsp"]),
            json!([[1, 2], [3, null]]),
            json!([[["deep", "er"]], [["x", "y"]]]),
            json!([{"k": [1, "two"]}, true, false]),
        ];
        for case in cases {
            let literal = json_to_param(&case).expect("an array is not NULL");
            let items = case.as_array().expect("cases are arrays");
            let parsed = parse_array_literal(&literal, b',');
            assert_eq!(parsed, Ok(expected_elements(items)), "{literal}");
        }
        let ints = json!([[1, 2], [3, 4]]);
        let literal = json_to_param(&ints).expect("not NULL");
        assert_eq!(text_to_json(1007, Some(&literal), false), ints);
    }

    #[test]
    fn garbage_never_panics() {
        let symbols: Vec<char> = "{}\",\\ aN[]=:1;".chars().collect();
        // Every string of up to 4 symbols: digit 0 of the code adds nothing.
        let base = symbols.len() + 1;
        for mut code in 0..base.pow(4) {
            let mut candidate = String::new();
            while code > 0 {
                if let Some(symbol) = (code % base).checked_sub(1).map(|digit| symbols[digit]) {
                    candidate.push(symbol);
                }
                code /= base;
            }
            for delimiter in [b',', b';'] {
                let _ = parse_array_literal(&candidate, delimiter);
            }
            for type_oid in [1000, 1007, 1020, 1022, 3807, 1009, INT4, FLOAT8, JSONB] {
                let _ = text_to_json(type_oid, Some(&candidate), false);
            }
        }
        // Multi-byte characters next to escapes keep the text valid UTF-8.
        for candidate in ["{\\é}", "{\"\\é\"}", "{é\\", "{\"é"] {
            let _ = parse_array_literal(candidate, b',');
        }
    }
}
