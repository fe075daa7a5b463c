//! Bounds-checked reading of message bodies and length-prefixed writing.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::ProtocolError;

/// Bytes of outgoing messages buffered before they are written out.
pub(crate) const WRITE_BUFFER_LIMIT: usize = 64 * 1024;

/// A cursor over one message body; every read checks the remaining length.
pub(crate) struct Reader {
    buf: Bytes,
    what: &'static str,
}

impl Reader {
    /// `what` names the message in errors.
    pub(crate) fn new(buf: Bytes, what: &'static str) -> Self {
        Reader { buf, what }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let head = self
            .buf
            .get(..N)
            .ok_or(ProtocolError::Truncated(self.what))?;
        let mut out = [0; N];
        out.copy_from_slice(head);
        self.buf = self.buf.slice(N..);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.take::<1>()?[0])
    }

    pub(crate) fn i32(&mut self) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.take()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, ProtocolError> {
        Ok(i64::from_be_bytes(self.take()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.take()?))
    }

    /// A NUL-terminated UTF-8 string.
    pub(crate) fn cstr(&mut self) -> Result<String, ProtocolError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::MissingTerminator(self.what))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| ProtocolError::InvalidUtf8(self.what))?
            .to_owned();
        self.buf = self.buf.slice(end + 1..);
        Ok(s)
    }

    /// Everything left.
    pub(crate) fn rest(self) -> Bytes {
        self.buf
    }

    /// Checks that the whole body was consumed.
    pub(crate) fn finish(self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes(self.what))
        }
    }
}

/// Appends a message: `tag`, a length placeholder, the body written by
/// `body`, then patches the length. On error nothing is left in `buf`.
pub(crate) fn put_message(
    buf: &mut BytesMut,
    tag: u8,
    body: impl FnOnce(&mut BytesMut) -> Result<(), ProtocolError>,
) -> Result<(), ProtocolError> {
    let start = buf.len();
    buf.put_u8(tag);
    let len_at = buf.len();
    buf.put_i32(0);
    let result = body(buf).and_then(|()| {
        i32::try_from(buf.len() - len_at)
            .map_err(|_| ProtocolError::Encode("message too long".into()))
    });
    match result {
        Ok(len) => {
            buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            buf.truncate(start);
            Err(e)
        }
    }
}

/// Appends a NUL-terminated string.
pub(crate) fn put_cstr(buf: &mut BytesMut, s: &str) -> Result<(), ProtocolError> {
    if s.contains('\0') {
        return Err(ProtocolError::Encode("string contains a NUL byte".into()));
    }
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
    Ok(())
}

/// Parses the 5-byte header of a tagged message at the front of `buf`
/// (type byte, then a length that counts itself but not the type byte) and
/// checks its length. Returns the tag and the whole message size once all of
/// it is buffered; otherwise reserves room for it and returns `None`.
pub(crate) fn tagged_frame(
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<Option<(u8, usize)>, ProtocolError> {
    let Some(&[tag, a, b, c, d]) = buf.get(..5) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([a, b, c, d]);
    if len < 4 {
        return Err(ProtocolError::InvalidLength {
            what: "message header",
            len: len.into(),
        });
    }
    // Lossless: 0 <= len <= i32::MAX.
    let body = len as usize - 4;
    if body > max_body {
        return Err(ProtocolError::MessageTooLong {
            len: body,
            max: max_body,
        });
    }
    let total = body + 5;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some((tag, total)))
}

/// Reads from `stream` into `buf` until `parse` returns a message. Returns
/// `Ok(None)` on EOF between messages. Cancel-safe: bytes read stay in `buf`.
pub(crate) async fn read_frame<R, T>(
    stream: &mut R,
    buf: &mut BytesMut,
    max_len: usize,
    parse: impl Fn(&mut BytesMut, usize) -> Result<Option<T>, ProtocolError>,
) -> Result<Option<T>, ProtocolError>
where
    R: AsyncRead + Unpin,
{
    loop {
        if let Some(msg) = parse(buf, max_len)? {
            return Ok(Some(msg));
        }
        if buf.capacity() == buf.len() {
            buf.reserve(8192);
        }
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ProtocolError::UnexpectedEof)
            };
        }
    }
}
