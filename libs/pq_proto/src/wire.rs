//! Bounds-checked reading of message bodies and length-prefixed writing.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::ProtocolError;

/// Bytes of outgoing messages buffered before they are written out.
pub(crate) const WRITE_BUFFER_LIMIT: usize = 64 * 1024;

/// Room made in a read buffer at a time. A message's buffer grows as its
/// bytes arrive, never by the length its header claims: a peer that claims
/// a 16 MiB message and sends nothing more costs one chunk, not 16 MiB.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

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
/// it is buffered; otherwise makes room for the next chunk of it (at most
/// [`READ_CHUNK`]) and returns `None`.
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
        buf.reserve((total - buf.len()).min(READ_CHUNK));
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

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use tokio::io::ReadBuf;

    use super::*;
    use crate::frontend::parse_message;

    /// Yields `data` a few bytes at a time, then nothing, ever (a peer that
    /// went quiet with its connection open).
    struct Trickle {
        data: Vec<u8>,
        at: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let at = self.at;
            let n = (self.data.len() - at).min(out.remaining()).min(4096);
            if n == 0 {
                return Poll::Pending;
            }
            out.put_slice(&self.data[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(()))
        }
    }

    /// Reads from a peer whose header claims `claimed` body bytes and that
    /// sends `sent` of them; returns the read buffer's capacity.
    async fn capacity_after(claimed: usize, sent: usize) -> usize {
        let mut data = vec![b'd'];
        data.extend_from_slice(&(claimed as i32 + 4).to_be_bytes());
        data.resize(5 + sent, 0xab);
        let mut peer = Trickle { data, at: 0 };
        let mut buf = BytesMut::new();
        let read = read_frame(
            &mut peer,
            &mut buf,
            crate::DEFAULT_MAX_MESSAGE_LEN,
            parse_message,
        );
        let result = tokio::time::timeout(Duration::from_millis(100), read).await;
        assert!(result.is_err(), "the message cannot be complete");
        assert_eq!(buf.len(), 5 + sent);
        buf.capacity()
    }

    #[tokio::test]
    async fn a_claimed_length_reserves_nothing_before_the_bytes_arrive() {
        let claimed = crate::DEFAULT_MAX_MESSAGE_LEN - 16;
        let capacity = capacity_after(claimed, 0).await;
        assert!(
            capacity <= 2 * READ_CHUNK,
            "{capacity} bytes reserved for nothing"
        );
        // The buffer grows with what arrives, not with what is claimed.
        let sent = 300 * 1024;
        let capacity = capacity_after(claimed, sent).await;
        assert!(
            capacity <= 2 * (sent + READ_CHUNK),
            "{capacity} bytes for {sent}"
        );
    }

    #[tokio::test]
    async fn a_message_read_in_chunks_is_whole() {
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut data = vec![b'd'];
        data.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        data.extend_from_slice(&body);
        let mut peer = Trickle { data, at: 0 };
        let mut buf = BytesMut::new();
        let message = read_frame(
            &mut peer,
            &mut buf,
            crate::DEFAULT_MAX_MESSAGE_LEN,
            parse_message,
        )
        .await
        .unwrap();
        match message {
            Some(crate::FeMessage::CopyData(got)) => assert_eq!(&got[..], &body[..]),
            other => panic!("expected CopyData, got {other:?}"),
        }
    }
}
