//! The startup phase of our servers: `pq_proto::parse_startup` on one
//! packet, and `PostgresBackend::read_startup` (which answers `SSLRequest`
//! and `GSSENCRequest`) on a whole stream, over an in-memory connection.

#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use pq_proto::frontend::MAX_STARTUP_PACKET_LEN;
use pq_proto::{parse_startup, PostgresBackend, StartupPacket, StartupParams};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose client sends `input` (in pieces of `step` bytes) and
/// then closes; what the server writes is kept.
struct MemStream {
    input: Vec<u8>,
    pos: usize,
    step: usize,
    written: Vec<u8>,
}

impl AsyncRead for MemStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .step
            .min(buf.remaining())
            .min(self.input.len() - self.pos);
        let from = self.pos;
        buf.put_slice(&self.input[from..from + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MemStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A `StartupMessage` with these parameters, as libpq writes it.
fn encode(minor: u16, params: &StartupParams) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_i32(0);
    out.put_i32((3 << 16) | i32::from(minor));
    for (k, v) in params.iter() {
        out.put_slice(k.as_bytes());
        out.put_u8(0);
        out.put_slice(v.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = out.len() as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out
}

fn check_packet(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let Ok(Some(packet)) = parse_startup(&mut buf) else {
        return;
    };
    let consumed = data.len() - buf.len();
    assert!((8..=MAX_STARTUP_PACKET_LEN).contains(&consumed));
    if let StartupPacket::Startup { minor, params } = packet {
        assert!(!params.user().is_empty());
        let _ = (params.database(), params.replication());
        let mut again = encode(minor, &params);
        assert_eq!(again.len(), consumed);
        match parse_startup(&mut again) {
            Ok(Some(StartupPacket::Startup {
                minor: m,
                params: p,
            })) => {
                assert_eq!((m, p), (minor, params));
            }
            other => panic!("re-encoded startup packet parsed as {other:?}"),
        }
    }
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    check_packet(stream);
    let conn = MemStream {
        input: stream.to_vec(),
        pos: 0,
        step: usize::from(step).max(1) * 16,
        written: Vec::new(),
    };
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut backend = PostgresBackend::new(conn);
            let result = backend.read_startup().await;
            let written = &backend.get_ref().written;
            // Only `N` answers are written before the startup message.
            assert!(written.iter().all(|&b| b == b'N'), "{written:?}");
            if let Ok(request) = result {
                let _ = format!("{request:?}");
            }
        })
    });
});
