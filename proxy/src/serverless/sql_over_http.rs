//! `POST /sql`: one statement, or a transaction of several, as JSON.
//!
//! The request names its database in the `Neon-Connection-String` header
//! and carries `{"query": "...", "params": [...]}` or `{"queries": [...]}`;
//! the answer is the statement's fields and rows as JSON (see
//! [`json`](super::json) for how values map), or PostgreSQL's error fields
//! with a 4xx/5xx status. The shape is the one Neon's serverless driver
//! speaks.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use pq_proto::client::{FieldDescription, QueryResult, TextQuery};
use pq_proto::{ClientError as PgClientError, ErrorFields};
use serde_json::{json, Map, Value};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::compute;
use crate::routing::route;
use crate::serverless::connection_string::ConnectionString;
use crate::serverless::json::{json_to_param, text_to_json};
use crate::serverless::pool::{PoolKey, PooledClient};
use crate::serverless::{ClientConnection, Serverless};

const CONNECTION_STRING: &str = "neon-connection-string";
const RAW_TEXT_OUTPUT: &str = "neon-raw-text-output";
const ARRAY_MODE: &str = "neon-array-mode";
const ISOLATION_LEVEL: &str = "neon-batch-isolation-level";
const READ_ONLY: &str = "neon-batch-read-only";
const DEFERRABLE: &str = "neon-batch-deferrable";

/// The headers a browser may send (CORS).
const ALLOWED_HEADERS: &str = "Authorization, Content-Type, Neon-Connection-String, \
Neon-Raw-Text-Output, Neon-Array-Mode, Neon-Pool-Opt-In, Neon-Batch-Read-Only, \
Neon-Batch-Isolation-Level, Neon-Batch-Deferrable";

/// An error answered as JSON: PostgreSQL's fields, with an HTTP status.
#[derive(Debug)]
pub struct SqlError {
    status: StatusCode,
    fields: Box<ErrorFields>,
}

impl SqlError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> SqlError {
        SqlError {
            status,
            fields: Box::new(ErrorFields::error(code, message)),
        }
    }

    fn bad_request(message: impl Into<String>) -> SqlError {
        SqlError::new(StatusCode::BAD_REQUEST, "08P01", message)
    }

    /// A server's error: authentication ones are 401, the rest 400.
    fn from_server(fields: Box<ErrorFields>) -> SqlError {
        let status = if fields.code.starts_with("28") {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        SqlError { status, fields }
    }

    fn body(&self) -> Value {
        let f = &self.fields;
        let other = |code: u8| f.other_field(code).map_or(Value::Null, Value::from);
        let none_if_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        json!({
            "message": f.message,
            "code": none_if_empty(&f.code),
            "detail": f.detail,
            "hint": f.hint,
            "position": other(b'P'),
            "internalPosition": other(b'p'),
            "internalQuery": other(b'q'),
            "severity": none_if_empty(&f.severity),
            "where": other(b'W'),
            "schema": other(b's'),
            "table": other(b't'),
            "column": other(b'c'),
            "dataType": other(b'd'),
            "constraint": other(b'n'),
            "file": other(b'F'),
            "line": other(b'L'),
            "routine": other(b'R'),
        })
    }
}

impl IntoResponse for SqlError {
    fn into_response(self) -> Response {
        json_response(self.status, &self.body())
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, axum::Json(body)).into_response();
    allow_any_origin(response.headers_mut());
    response
}

fn allow_any_origin(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
}

/// `OPTIONS /sql`: a browser's preflight.
pub async fn preflight() -> Response {
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    allow_any_origin(headers);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    response
}

/// How the request wants its answer.
#[derive(Debug, Clone, Copy, Default)]
struct OutputMode {
    array_mode: bool,
    raw_text: bool,
}

/// How a batch's transaction begins.
#[derive(Debug, Default)]
struct BatchOptions {
    isolation: Option<&'static str>,
    read_only: bool,
    deferrable: bool,
}

impl BatchOptions {
    fn begin(&self) -> String {
        let mut sql = String::from("BEGIN");
        if let Some(level) = self.isolation {
            sql.push_str(" ISOLATION LEVEL ");
            sql.push_str(level);
        }
        if self.read_only {
            sql.push_str(" READ ONLY");
        }
        if self.deferrable {
            sql.push_str(" DEFERRABLE");
        }
        sql
    }
}

struct Statement {
    sql: String,
    params: Vec<Option<String>>,
}

enum Payload {
    Single(Statement),
    Batch(Vec<Statement>),
}

/// `POST /sql`.
pub async fn handle(
    State(state): State<Arc<Serverless>>,
    Extension(connection): Extension<ClientConnection>,
    request: Request,
) -> Response {
    state.requests.inc();
    let span = info_span!("sql_over_http", peer = %connection.peer);
    match run(&state, connection, request).instrument(span).await {
        Ok(body) => {
            let mut response = (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response();
            allow_any_origin(response.headers_mut());
            response
        }
        Err(e) => {
            debug!(status = %e.status, "POST /sql failed: {}", e.fields);
            e.into_response()
        }
    }
}

async fn run(
    state: &Serverless,
    connection: ClientConnection,
    request: Request,
) -> Result<Vec<u8>, SqlError> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let conn_string = header_text(headers, CONNECTION_STRING)?
        .ok_or_else(|| SqlError::bad_request("the Neon-Connection-String header is missing"))?;
    let conn_string: ConnectionString = conn_string
        .parse()
        .map_err(|e| SqlError::bad_request(format!("Neon-Connection-String: {e}")))?;
    let output = OutputMode {
        array_mode: header_flag(headers, ARRAY_MODE)?,
        raw_text: header_flag(headers, RAW_TEXT_OUTPUT)?,
    };
    let batch = BatchOptions {
        isolation: isolation_level(headers)?,
        read_only: header_flag(headers, READ_ONLY)?,
        deferrable: header_flag(headers, DEFERRABLE)?,
    };
    if let Some(accept) = header_text(headers, header::ACCEPT.as_str())? {
        if accept.contains("application/vnd.neon.sql") {
            return Err(SqlError::new(
                StatusCode::NOT_ACCEPTABLE,
                "0A000",
                format!("this proxy answers only application/json, not {accept}: use the driver's default responseFormat 'json'"),
            ));
        }
    }
    let body = read_body(body, headers, state.max_request_bytes).await?;
    let payload = parse_payload(&body)?;
    let mut pooled = checkout(state, &conn_string, connection).await?;
    let deadline = state.statement_timeout + Duration::from_secs(5);
    let outcome = tokio::time::timeout(deadline, async {
        match &payload {
            Payload::Single(statement) => execute(state, &mut pooled.1, statement, output).await,
            Payload::Batch(statements) => {
                run_batch(state, &mut pooled.1, statements, &batch, output).await
            }
        }
    })
    .await;
    let (key, client) = pooled;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(_) => {
            cancel_in_background(&client);
            return Err(SqlError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "57014",
                format!("the statement did not finish within {deadline:?}"),
            ));
        }
    };
    state.pool.put(key, client);
    let body = match outcome? {
        Answer::Single(result) => serde_json::to_vec(&result),
        Answer::Batch(results) => serde_json::to_vec(&BatchJson { results }),
    }
    .map_err(|e| SqlError::new(StatusCode::INTERNAL_SERVER_ERROR, "XX000", e.to_string()))?;
    if body.len() > state.max_response_bytes {
        return Err(response_too_large(state.max_response_bytes));
    }
    Ok(body)
}

enum Answer {
    Single(ResultJson),
    Batch(Vec<ResultJson>),
}

/// One statement's answer, its keys in the order the driver documents.
#[derive(Debug, serde::Serialize)]
struct ResultJson {
    command: String,
    #[serde(rename = "rowCount")]
    row_count: Option<u64>,
    rows: Vec<RowJson>,
    #[serde(rename = "rowAsArray")]
    row_as_array: bool,
    fields: Vec<FieldJson>,
}

#[derive(Debug, serde::Serialize)]
struct BatchJson {
    results: Vec<ResultJson>,
}

/// A row: an array, or an object whose keys keep the columns' order.
#[derive(Debug)]
enum RowJson {
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
}

impl serde::Serialize for RowJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            RowJson::Array(values) => values.serialize(serializer),
            RowJson::Object(pairs) => {
                let mut map = serializer.serialize_map(Some(pairs.len()))?;
                for (name, value) in pairs {
                    map.serialize_entry(name, value)?;
                }
                map.end()
            }
        }
    }
}

fn response_too_large(max: usize) -> SqlError {
    SqlError::new(
        StatusCode::BAD_REQUEST,
        "54000",
        format!("the response is larger than the limit of {max} bytes: select fewer rows or smaller values"),
    )
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, SqlError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map_err(|_| SqlError::bad_request(format!("the {name} header is not ASCII text")))
        })
        .transpose()
}

fn header_flag(headers: &HeaderMap, name: &str) -> Result<bool, SqlError> {
    match header_text(headers, name)? {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(SqlError::bad_request(format!(
            "the {name} header must be true or false, not {v:?}"
        ))),
    }
}

fn isolation_level(headers: &HeaderMap) -> Result<Option<&'static str>, SqlError> {
    let Some(value) = header_text(headers, ISOLATION_LEVEL)? else {
        return Ok(None);
    };
    Ok(Some(match value {
        "ReadUncommitted" => "READ UNCOMMITTED",
        "ReadCommitted" => "READ COMMITTED",
        "RepeatableRead" => "REPEATABLE READ",
        "Serializable" => "SERIALIZABLE",
        other => {
            return Err(SqlError::bad_request(format!(
                "Neon-Batch-Isolation-Level must be ReadUncommitted, ReadCommitted, RepeatableRead or Serializable, not {other:?}"
            )))
        }
    }))
}

async fn read_body(body: Body, headers: &HeaderMap, max: usize) -> Result<bytes::Bytes, SqlError> {
    let too_large = || {
        SqlError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "54000",
            format!("the request body is larger than the limit of {max} bytes"),
        )
    };
    let declared =
        header_text(headers, header::CONTENT_LENGTH.as_str())?.and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, max).await.map_err(|e| {
        let length_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if length_limit {
            too_large()
        } else {
            SqlError::bad_request(format!("reading the request body: {e}"))
        }
    })
}

fn parse_payload(body: &[u8]) -> Result<Payload, SqlError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| SqlError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(SqlError::bad_request(
            r#"the request body must be a JSON object: {"query": ..., "params": [...]} or {"queries": [...]}"#,
        ));
    };
    if let Some(queries) = object.get("queries") {
        let Value::Array(queries) = queries else {
            return Err(SqlError::bad_request("\"queries\" must be an array"));
        };
        let statements = queries
            .iter()
            .map(|q| match q {
                Value::Object(q) => statement(q),
                _ => Err(SqlError::bad_request(
                    "each of \"queries\" must be an object with \"query\" and \"params\"",
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Payload::Batch(statements));
    }
    statement(&object).map(Payload::Single)
}

fn statement(object: &Map<String, Value>) -> Result<Statement, SqlError> {
    let Some(Value::String(sql)) = object.get("query") else {
        return Err(SqlError::bad_request(
            "the request needs \"query\" (a string) or \"queries\" (an array)",
        ));
    };
    let params = match object.get("params") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(params)) => params.iter().map(json_to_param).collect(),
        Some(_) => return Err(SqlError::bad_request("\"params\" must be an array")),
    };
    Ok(Statement {
        sql: sql.clone(),
        params,
    })
}

/// A pooled connection for the request: an idle one of its key, or a new
/// one (wake, connect, authenticate).
async fn checkout(
    state: &Serverless,
    conn_string: &ConnectionString,
    connection: ClientConnection,
) -> Result<(PoolKey, PooledClient), SqlError> {
    let shared = &state.shared;
    if conn_string.user == compute_api::spec::SUPERUSER {
        return Err(SqlError::new(
            StatusCode::UNAUTHORIZED,
            "28000",
            format!(
                "the superuser {} cannot connect through the proxy: log in as one of the database's roles",
                compute_api::spec::SUPERUSER
            ),
        ));
    }
    if shared.require_tls && !connection.tls {
        return Err(SqlError::new(
            StatusCode::FORBIDDEN,
            "28000",
            "this proxy requires TLS: use https://",
        ));
    }
    let password = conn_string.password.as_deref().ok_or_else(|| {
        SqlError::new(
            StatusCode::UNAUTHORIZED,
            "28P01",
            "the connection string has no password",
        )
    })?;
    let routed = route(conn_string.options.as_deref(), Some(&conn_string.host))
        .map_err(|e| SqlError::bad_request(e.to_string()))?;
    let key = PoolKey::new(
        routed.target.clone(),
        &conn_string.user,
        &conn_string.database,
        routed.options.clone(),
        password,
    );
    if let Some(pooled) = state.pool.take(&key) {
        return Ok((key, pooled));
    }
    let slot = state
        .pool
        .slot(shared.connect_timeout)
        .await
        .map_err(|e| SqlError::new(StatusCode::SERVICE_UNAVAILABLE, "53300", e.to_string()))?;
    let compute = shared.connect_compute(&routed.target).await.map_err(|e| {
        let status = match e {
            compute::ConnectError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        SqlError::new(status, e.sqlstate(), e.to_string())
    })?;
    let address = compute.address;
    info!(target = %routed.target, endpoint = %compute.endpoint, %address, user = %conn_string.user, "opening a pooled connection");
    let timeout_option = format!(
        "-c statement_timeout={}",
        state.statement_timeout.as_millis()
    );
    let options = match &routed.options {
        Some(user_options) => format!("{timeout_option} {user_options}"),
        None => timeout_option,
    };
    let params = [
        ("user", conn_string.user.as_str()),
        ("database", conn_string.database.as_str()),
        (
            "application_name",
            compute_api::spec::SERVERLESS_APPLICATION_NAME,
        ),
        ("options", options.as_str()),
    ];
    let connected = tokio::time::timeout(
        shared.startup_timeout,
        pq_proto::client::connect_stream(compute.stream, &params, Some(password)),
    )
    .await
    .map_err(|_| {
        SqlError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "08006",
            "the compute did not finish the startup in time",
        )
    })?;
    let client = connected.map_err(|e| match e {
        PgClientError::Server(fields) => SqlError::from_server(fields),
        PgClientError::Auth(message) => SqlError::new(StatusCode::UNAUTHORIZED, "28000", message),
        other => SqlError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "08006",
            format!("connecting to the compute: {other}"),
        ),
    })?;
    Ok((key, state.pool.opened(client, address, slot)))
}

/// Runs one statement; the session is reset first if the connection was
/// used before.
async fn query(
    state: &Serverless,
    pooled: &mut PooledClient,
    statement: &Statement,
) -> Result<QueryResult, SqlError> {
    let reset_session = std::mem::replace(&mut pooled.reused, false);
    pooled
        .client
        .query_text(TextQuery {
            sql: &statement.sql,
            params: &statement.params,
            max_result_bytes: state.max_response_bytes,
            reset_session,
        })
        .await
        .map_err(|e| match e {
            PgClientError::Server(fields) => SqlError::from_server(fields),
            PgClientError::ResultTooLarge(max) => response_too_large(max),
            other => {
                warn!("a statement over a pooled connection failed: {other}");
                SqlError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "08006",
                    format!("the connection to the compute failed: {other}"),
                )
            }
        })
}

async fn execute(
    state: &Serverless,
    pooled: &mut PooledClient,
    statement: &Statement,
    output: OutputMode,
) -> Result<Answer, SqlError> {
    let result = query(state, pooled, statement).await?;
    Ok(Answer::Single(result_json(&result, output)))
}

async fn run_batch(
    state: &Serverless,
    pooled: &mut PooledClient,
    statements: &[Statement],
    options: &BatchOptions,
    output: OutputMode,
) -> Result<Answer, SqlError> {
    let plain = |sql: String| Statement {
        sql,
        params: Vec::new(),
    };
    query(state, pooled, &plain(options.begin())).await?;
    let mut results = Vec::with_capacity(statements.len());
    for statement in statements {
        match query(state, pooled, statement).await {
            Ok(result) => results.push(result_json(&result, output)),
            Err(e) => {
                if pooled.client.transaction_status() != b'I' && pooled.client.is_ready() {
                    // Best effort: a connection left in a transaction is
                    // not pooled anyway.
                    let _ = query(state, pooled, &plain("ROLLBACK".into())).await;
                }
                return Err(e);
            }
        }
    }
    query(state, pooled, &plain("COMMIT".into())).await?;
    Ok(Answer::Batch(results))
}

/// The JSON of one statement's result.
fn result_json(result: &QueryResult, output: OutputMode) -> ResultJson {
    let (command, row_count) = command_and_count(&result.command_tag);
    let rows = result
        .rows
        .iter()
        .map(|row| {
            let values = row.iter().zip(&result.fields).map(|(value, field)| {
                text_to_json(field.type_oid, value.as_deref(), output.raw_text)
            });
            if output.array_mode {
                RowJson::Array(values.collect())
            } else {
                let names = result.fields.iter().map(|f| f.name.clone());
                RowJson::Object(names.zip(values).collect())
            }
        })
        .collect();
    ResultJson {
        command: command.to_owned(),
        row_count,
        rows,
        row_as_array: output.array_mode,
        fields: result.fields.iter().map(field_json).collect(),
    }
}

/// A result column as the driver (node-postgres) describes fields.
#[derive(Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct FieldJson {
    name: String,
    #[serde(rename = "dataTypeID")]
    data_type_id: u32,
    #[serde(rename = "tableID")]
    table_id: u32,
    #[serde(rename = "columnID")]
    column_id: i16,
    data_type_size: i16,
    data_type_modifier: i32,
    format: &'static str,
}

fn field_json(field: &FieldDescription) -> FieldJson {
    FieldJson {
        name: field.name.clone(),
        data_type_id: field.type_oid,
        table_id: field.table_oid,
        column_id: field.column_id,
        data_type_size: field.type_size,
        data_type_modifier: field.type_modifier,
        format: if field.format == 1 { "binary" } else { "text" },
    }
}

/// `INSERT 0 5` → (`INSERT`, 5); `CREATE TABLE` → (`CREATE`, null).
fn command_and_count(tag: &str) -> (&str, Option<u64>) {
    let command = tag.split(' ').next().unwrap_or("");
    let count = tag
        .rsplit(' ')
        .next()
        .filter(|_| tag.contains(' '))
        .and_then(|n| n.parse().ok());
    (command, count)
}

/// Asks the compute to cancel what a timed-out request left running; the
/// connection itself is dropped.
fn cancel_in_background(pooled: &PooledClient) {
    let Some(key) = pooled.client.cancel_key() else {
        return;
    };
    let address = pooled.address;
    tokio::spawn(async move {
        let sent = pq_proto::client::send_cancel_request(address, key);
        if let Err(e) = tokio::time::timeout(Duration::from_secs(10), sent).await {
            warn!(%address, "cancelling a timed-out statement: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tags() {
        assert_eq!(command_and_count("INSERT 0 5"), ("INSERT", Some(5)));
        assert_eq!(command_and_count("SELECT 2"), ("SELECT", Some(2)));
        assert_eq!(command_and_count("CREATE TABLE"), ("CREATE", None));
        assert_eq!(command_and_count("BEGIN"), ("BEGIN", None));
        assert_eq!(command_and_count(""), ("", None));
    }

    #[test]
    fn batch_begin() {
        let options = BatchOptions {
            isolation: Some("SERIALIZABLE"),
            read_only: true,
            deferrable: true,
        };
        assert_eq!(
            options.begin(),
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE"
        );
        assert_eq!(BatchOptions::default().begin(), "BEGIN");
    }

    #[test]
    fn payloads() {
        assert!(matches!(
            parse_payload(br#"{"query": "SELECT $1", "params": [1, null]}"#),
            Ok(Payload::Single(s)) if s.params == vec![Some("1".to_owned()), None]
        ));
        assert!(matches!(
            parse_payload(br#"{"queries": [{"query": "SELECT 1"}, {"query": "SELECT 2", "params": []}]}"#),
            Ok(Payload::Batch(b)) if b.len() == 2
        ));
        for bad in [
            &b"[]"[..],
            b"{}",
            b"{\"query\": 1}",
            b"{\"queries\": {}}",
            b"not json",
            b"{\"query\": \"x\", \"params\": 3}",
        ] {
            let e = parse_payload(bad).err().expect("refused");
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn error_bodies_carry_every_field() {
        let mut fields = ErrorFields::error("23505", "duplicate key");
        fields.detail = Some("Key (x)=(1) already exists.".into());
        fields.other = vec![
            (b'n', "t_pkey".into()),
            (b't', "t".into()),
            (b'P', "8".into()),
        ];
        let body = SqlError::from_server(Box::new(fields)).body();
        assert_eq!(body["code"], "23505");
        assert_eq!(body["constraint"], "t_pkey");
        assert_eq!(body["table"], "t");
        assert_eq!(body["position"], "8");
        assert_eq!(body["hint"], Value::Null);
        assert_eq!(body["severity"], "ERROR");
    }
}
