//! Queries with parameters over the extended protocol, values in text.
//!
//! One [`TextQuery`] is one round trip: `Parse`, `Bind`, `Describe`,
//! `Execute` and `Sync` go in one write (after a `DISCARD ALL` when the
//! session is to be reset first), and the answers are read to
//! `ReadyForQuery`.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;

use super::{encode_err, invalid, keep_error, Client, ClientError};
use crate::ProtocolError;

/// A result column, as `RowDescription` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    pub name: String,
    /// The table's OID when the column is a table's column, else 0.
    pub table_oid: u32,
    /// The column's attribute number in that table, else 0.
    pub column_id: i16,
    pub type_oid: u32,
    /// `pg_type.typlen`: negative for variable-length types.
    pub type_size: i16,
    /// `atttypmod`, e.g. the length of a `varchar(n)` plus 4; -1 for none.
    pub type_modifier: i32,
    /// 0 for text, 1 for binary.
    pub format: i16,
}

/// What one statement returned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryResult {
    /// Empty for a statement that returns no rows.
    pub fields: Vec<FieldDescription>,
    /// Values in text format; `None` is NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// The command tag, e.g. `SELECT 2` or `INSERT 0 1`; empty for an
    /// empty query.
    pub command_tag: String,
}

/// One statement with text parameters.
#[derive(Debug, Clone, Copy)]
pub struct TextQuery<'a> {
    pub sql: &'a str,
    /// `None` is NULL. The server infers each parameter's type.
    pub params: &'a [Option<String>],
    /// The most bytes of row data to take; past it the query fails with
    /// [`ClientError::ResultTooLarge`] and the connection is unusable.
    pub max_result_bytes: usize,
    /// Send `DISCARD ALL` first, in the same write: the session forgets
    /// what earlier users of the connection set or created.
    pub reset_session: bool,
}

impl Client {
    /// Runs one statement with the extended protocol, parameters and
    /// results in text. A server error is returned as
    /// [`ClientError::Server`] once the server is ready again (the
    /// connection stays usable).
    pub async fn query_text(&mut self, query: TextQuery<'_>) -> Result<QueryResult, ClientError> {
        if !self.ready {
            return Err(ClientError::InvalidState(
                "an earlier operation failed or was abandoned midway",
            ));
        }
        if query.reset_session {
            frontend::query("DISCARD ALL", &mut self.write_buf).map_err(encode_err)?;
        }
        encode_statement(query, &mut self.write_buf)?;
        self.ready = false;
        self.flush().await?;
        if query.reset_session {
            self.read_until_ready(None).await?;
            self.ready = false;
        }
        self.read_statement_result(query.max_result_bytes).await
    }

    async fn read_statement_result(
        &mut self,
        max_result_bytes: usize,
    ) -> Result<QueryResult, ClientError> {
        let mut result = QueryResult::default();
        let mut result_bytes = 0usize;
        let mut error = None;
        loop {
            match self.next().await? {
                (_, Message::ParseComplete | Message::BindComplete | Message::NoData) => {}
                (_, Message::RowDescription(body)) => {
                    result.fields = body
                        .fields()
                        .map(|f| {
                            Ok(FieldDescription {
                                name: f.name().to_owned(),
                                table_oid: f.table_oid(),
                                column_id: f.column_id(),
                                type_oid: f.type_oid(),
                                type_size: f.type_size(),
                                type_modifier: f.type_modifier(),
                                format: f.format(),
                            })
                        })
                        .collect()
                        .map_err(invalid)?;
                }
                (_, Message::DataRow(body)) => {
                    let row = text_values(&body)?;
                    if row.len() != result.fields.len() {
                        return Err(ProtocolError::InvalidBackendMessage(
                            "DataRow does not match RowDescription".into(),
                        )
                        .into());
                    }
                    result_bytes = result_bytes.saturating_add(body.buffer().len());
                    if result_bytes > max_result_bytes {
                        // Not ready: the rest of the result is unread.
                        return Err(ClientError::ResultTooLarge(max_result_bytes));
                    }
                    result.rows.push(row);
                }
                (_, Message::CommandComplete(body)) => {
                    result.command_tag = body.tag().map_err(invalid)?.to_owned();
                }
                (_, Message::EmptyQueryResponse) => {}
                (_, Message::ErrorResponse(body)) => keep_error(&mut error, &body)?,
                (_, Message::ReadyForQuery(body)) => {
                    self.ready = true;
                    self.transaction_status = body.status();
                    return error.map_or(Ok(result), Err);
                }
                (_, Message::CopyInResponse(_)) => {
                    frontend::copy_fail(
                        "COPY FROM STDIN is not supported here",
                        &mut self.write_buf,
                    )
                    .map_err(encode_err)?;
                    self.flush().await?;
                }
                (tag @ (b'W' | b'H'), _) => return Err(ClientError::Unexpected(tag)),
                (_, msg) => self.note(&msg),
            }
        }
    }
}

/// `Parse`, `Bind`, `Describe` (portal), `Execute` and `Sync` of the
/// unnamed statement and portal.
fn encode_statement(query: TextQuery<'_>, buf: &mut BytesMut) -> Result<(), ClientError> {
    if query.params.len() > u16::MAX as usize {
        return Err(ClientError::Protocol(ProtocolError::Encode(format!(
            "{} parameters: a statement takes at most {}",
            query.params.len(),
            u16::MAX
        ))));
    }
    frontend::parse("", query.sql, std::iter::empty(), buf).map_err(encode_err)?;
    frontend::bind(
        "",
        "",
        std::iter::empty(),
        query.params.iter(),
        |value, buf| match value {
            Some(text) => {
                buf.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        },
        std::iter::empty(),
        buf,
    )
    .map_err(|e| {
        let message = match e {
            frontend::BindError::Conversion(e) => e.to_string(),
            frontend::BindError::Serialization(e) => e.to_string(),
        };
        ClientError::Protocol(ProtocolError::Encode(message))
    })?;
    frontend::describe(b'P', "", buf).map_err(encode_err)?;
    frontend::execute("", 0, buf).map_err(encode_err)?;
    frontend::sync(buf);
    Ok(())
}

/// The values of a `DataRow`, as text.
fn text_values(
    body: &postgres_protocol::message::backend::DataRowBody,
) -> Result<Vec<Option<String>>, ClientError> {
    let buf = body.buffer();
    body.ranges()
        .map_err(invalid)
        .map(|range| {
            let Some(range) = range else { return Ok(None) };
            let bytes = buf.get(range).ok_or(ProtocolError::Truncated("DataRow"))?;
            let text =
                std::str::from_utf8(bytes).map_err(|_| ProtocolError::InvalidUtf8("DataRow"))?;
            Ok(Some(text.to_owned()))
        })
        .collect()
}
