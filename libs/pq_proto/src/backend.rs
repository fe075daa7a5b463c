//! Messages sent by a server (a *backend*), encoded by our servers.

use bytes::{BufMut, BytesMut};

use crate::wire::{put_cstr, put_message};
use crate::{oid, CancelKey, ErrorFields, Format, ProtocolError};

/// The session state reported by `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

/// One column of a `RowDescription`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDesc {
    pub name: String,
    /// The type's OID, see [`crate::oid`].
    pub type_oid: u32,
    /// `pg_type.typlen`: the size in bytes, or -1 for variable length.
    pub type_len: i16,
    pub type_modifier: i32,
    pub format: Format,
}

impl ColumnDesc {
    /// A column of the given type, sent as text.
    pub fn new(name: &str, type_oid: u32, type_len: i16) -> Self {
        ColumnDesc {
            name: name.to_owned(),
            type_oid,
            type_len,
            type_modifier: -1,
            format: Format::Text,
        }
    }

    /// A `text` column.
    pub fn text(name: &str) -> Self {
        Self::new(name, oid::TEXT, -1)
    }
}

/// A message from server to client. Encoding checks what the protocol
/// cannot carry (NUL bytes inside strings, lengths over `i32::MAX`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeMessage<'a> {
    AuthenticationOk,
    AuthenticationCleartextPassword,
    /// The salt to hash the password with.
    AuthenticationMd5Password([u8; 4]),
    /// The SASL mechanisms offered, e.g. `SCRAM-SHA-256`.
    AuthenticationSasl(&'a [&'a str]),
    AuthenticationSaslContinue(&'a [u8]),
    AuthenticationSaslFinal(&'a [u8]),
    ParameterStatus {
        name: &'a str,
        value: &'a str,
    },
    BackendKeyData(CancelKey),
    /// Answers a startup packet that asked for protocol 3.x (x > 0) or for
    /// `_pq_.` options: we speak 3.`newest_minor` and ignore `unrecognized`.
    NegotiateProtocolVersion {
        newest_minor: u16,
        unrecognized: &'a [String],
    },
    ReadyForQuery(TransactionStatus),
    RowDescription(&'a [ColumnDesc]),
    /// One row; `None` is SQL NULL, values are in their column's format.
    DataRow(&'a [Option<&'a [u8]>]),
    /// The command tag, e.g. `SELECT 3`.
    CommandComplete(&'a str),
    EmptyQueryResponse,
    ErrorResponse(&'a ErrorFields),
    NoticeResponse(&'a ErrorFields),
    /// Copy responses describe a stream of zero columns in the given format,
    /// as the replication and base backup protocols use them.
    CopyInResponse(Format),
    CopyOutResponse(Format),
    CopyBothResponse(Format),
    CopyData(&'a [u8]),
    CopyDone,
}

fn len_i16(n: usize) -> Result<i16, ProtocolError> {
    i16::try_from(n).map_err(|_| ProtocolError::Encode("too many fields".into()))
}

fn put_auth(buf: &mut BytesMut, code: i32, data: &[u8]) -> Result<(), ProtocolError> {
    put_message(buf, b'R', |buf| {
        buf.put_i32(code);
        buf.put_slice(data);
        Ok(())
    })
}

fn put_error_fields(buf: &mut BytesMut, tag: u8, e: &ErrorFields) -> Result<(), ProtocolError> {
    put_message(buf, tag, |buf| {
        let fields = [
            (b'S', Some(&e.severity)),
            (b'V', Some(&e.severity)),
            (b'C', Some(&e.code)),
            (b'M', Some(&e.message)),
            (b'D', e.detail.as_ref()),
            (b'H', e.hint.as_ref()),
        ];
        let other = e.other.iter().map(|(code, value)| (*code, Some(value)));
        for (field, value) in fields.into_iter().chain(other) {
            if let Some(value) = value {
                if field == 0 {
                    return Err(ProtocolError::Encode("an error field with code 0".into()));
                }
                buf.put_u8(field);
                put_cstr(buf, value)?;
            }
        }
        buf.put_u8(0);
        Ok(())
    })
}

fn put_copy_response(buf: &mut BytesMut, tag: u8, format: Format) -> Result<(), ProtocolError> {
    put_message(buf, tag, |buf| {
        buf.put_i8(format.code() as i8);
        buf.put_i16(0);
        Ok(())
    })
}

fn put_empty(buf: &mut BytesMut, tag: u8) -> Result<(), ProtocolError> {
    put_message(buf, tag, |_| Ok(()))
}

impl BeMessage<'_> {
    /// Appends the encoded message to `buf`; on error `buf` is unchanged.
    pub fn write(&self, buf: &mut BytesMut) -> Result<(), ProtocolError> {
        match self {
            BeMessage::AuthenticationOk => put_auth(buf, 0, &[]),
            BeMessage::AuthenticationCleartextPassword => put_auth(buf, 3, &[]),
            BeMessage::AuthenticationMd5Password(salt) => put_auth(buf, 5, salt),
            BeMessage::AuthenticationSasl(mechanisms) => put_message(buf, b'R', |buf| {
                buf.put_i32(10);
                for m in *mechanisms {
                    put_cstr(buf, m)?;
                }
                buf.put_u8(0);
                Ok(())
            }),
            BeMessage::AuthenticationSaslContinue(data) => put_auth(buf, 11, data),
            BeMessage::AuthenticationSaslFinal(data) => put_auth(buf, 12, data),
            BeMessage::ParameterStatus { name, value } => put_message(buf, b'S', |buf| {
                put_cstr(buf, name)?;
                put_cstr(buf, value)
            }),
            BeMessage::BackendKeyData(key) => put_message(buf, b'K', |buf| {
                buf.put_i32(key.process_id);
                buf.put_i32(key.secret_key);
                Ok(())
            }),
            BeMessage::NegotiateProtocolVersion {
                newest_minor,
                unrecognized,
            } => put_message(buf, b'v', |buf| {
                buf.put_i32(i32::from(*newest_minor) | (3 << 16));
                buf.put_i32(len_i16(unrecognized.len())?.into());
                unrecognized.iter().try_for_each(|name| put_cstr(buf, name))
            }),
            BeMessage::ReadyForQuery(status) => put_message(buf, b'Z', |buf| {
                buf.put_u8(match status {
                    TransactionStatus::Idle => b'I',
                    TransactionStatus::InTransaction => b'T',
                    TransactionStatus::Failed => b'E',
                });
                Ok(())
            }),
            BeMessage::RowDescription(columns) => put_message(buf, b'T', |buf| {
                buf.put_i16(len_i16(columns.len())?);
                for c in *columns {
                    put_cstr(buf, &c.name)?;
                    buf.put_u32(0); // table OID: not a table column
                    buf.put_i16(0); // attribute number
                    buf.put_u32(c.type_oid);
                    buf.put_i16(c.type_len);
                    buf.put_i32(c.type_modifier);
                    buf.put_i16(c.format.code());
                }
                Ok(())
            }),
            BeMessage::DataRow(values) => put_message(buf, b'D', |buf| {
                buf.put_i16(len_i16(values.len())?);
                for value in *values {
                    match value {
                        None => buf.put_i32(-1),
                        Some(v) => {
                            let len = i32::try_from(v.len())
                                .map_err(|_| ProtocolError::Encode("value too long".into()))?;
                            buf.put_i32(len);
                            buf.put_slice(v);
                        }
                    }
                }
                Ok(())
            }),
            BeMessage::CommandComplete(tag) => put_message(buf, b'C', |buf| put_cstr(buf, tag)),
            BeMessage::EmptyQueryResponse => put_empty(buf, b'I'),
            BeMessage::ErrorResponse(e) => put_error_fields(buf, b'E', e),
            BeMessage::NoticeResponse(e) => put_error_fields(buf, b'N', e),
            BeMessage::CopyInResponse(format) => put_copy_response(buf, b'G', *format),
            BeMessage::CopyOutResponse(format) => put_copy_response(buf, b'H', *format),
            BeMessage::CopyBothResponse(format) => put_copy_response(buf, b'W', *format),
            BeMessage::CopyData(data) => put_message(buf, b'd', |buf| {
                buf.put_slice(data);
                Ok(())
            }),
            BeMessage::CopyDone => put_empty(buf, b'c'),
        }
    }
}
