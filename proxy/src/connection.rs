//! One client connection: the startup phase (TLS if asked and configured),
//! routing, waking the compute, then relaying bytes both ways.
//!
//! The proxy refuses the superuser (`cloud_admin`, whom computes trust from
//! loopback) and, with `require_tls`, sessions without TLS, before it wakes
//! anything. Otherwise it does not authenticate: after it has passed the
//! startup packet on, the compute's authentication exchange (SCRAM
//! included) travels through untouched. It reads the compute's messages only up to the first
//! `ReadyForQuery`, to learn the session's cancel key, and copies raw bytes
//! after that.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{BufMut, BytesMut};
use pq_proto::{parse_startup, BeMessage, CancelKey, ErrorFields, StartupPacket, StartupParams};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::compute;
use crate::control_plane_client::ControlPlane;
use crate::metrics::Metrics;
use crate::routing::{route, Routed, Target};

/// A client or compute byte stream (plain TCP or TLS).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The largest message of the compute's that the proxy parses (during the
/// startup phase only; later bytes are copied without parsing).
const MAX_STARTUP_REPLY_LEN: usize = 1 << 20;

/// Cancel keys of the sessions relayed now, and the compute each is on.
#[derive(Default)]
pub struct CancelMap {
    sessions: Mutex<HashMap<CancelKey, SocketAddr>>,
}

impl CancelMap {
    fn insert(&self, key: CancelKey, compute: SocketAddr) {
        self.lock().insert(key, compute);
    }

    fn remove(&self, key: &CancelKey) {
        self.lock().remove(key);
    }

    fn get(&self, key: &CancelKey) -> Option<SocketAddr> {
        self.lock().get(key).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CancelKey, SocketAddr>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What every connection shares.
pub struct Shared {
    pub control_plane: ControlPlane,
    pub tls: Option<TlsAcceptor>,
    pub cancel_map: CancelMap,
    pub metrics: Metrics,
    pub startup_timeout: Duration,
    pub connect_timeout: Duration,
    /// Refuse sessions that did not start with TLS.
    pub require_tls: bool,
}

impl Shared {
    /// Wake the compute of `target` and connect to it.
    pub async fn connect_compute(
        &self,
        target: &Target,
    ) -> Result<compute::ComputeConnection, compute::ConnectError> {
        compute::connect(
            &self.control_plane,
            &self.metrics,
            self.connect_timeout,
            target,
        )
        .await
    }
}

/// What the startup phase ended with.
pub(crate) enum Startup {
    Session {
        params: StartupParams,
        sni: Option<String>,
        tls: bool,
    },
    Cancel(CancelKey),
}

/// An error to report to the client as a FATAL ErrorResponse.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ClientError {
    pub code: &'static str,
    pub message: String,
}

pub(crate) fn client_error(code: &'static str, message: impl Into<String>) -> ClientError {
    ClientError {
        code,
        message: message.into(),
    }
}

/// Serve one client connection until it ends or `cancel` fires. Its
/// startup phase (TLS, the startup packet) is `pending`: cut short at the
/// startup deadline, or closed at once when newer connections need room;
/// then it takes a session slot or is refused with `53300`.
pub async fn handle(
    tcp: TcpStream,
    peer: SocketAddr,
    pending: pq_proto::Pending,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut stream: Option<Box<dyn Stream>> = Some(Box::new(tcp));
    let mut buf = BytesMut::new();
    let startup = pending
        .startup(read_startup(&mut stream, &mut buf, shared.tls.as_ref()))
        .await;
    let startup = match startup {
        Ok(startup) => startup,
        Err(pq_proto::StartupAborted::Evicted) => {
            // Can come at any rate: the listener logs them in sum.
            debug!(%peer, "closed in its startup phase: too many connections were starting up");
            return Ok(());
        }
        Err(pq_proto::StartupAborted::TimedOut(_)) => Err(client_error(
            "08P01",
            "timed out waiting for the startup packet",
        )),
    };
    let Some(mut stream) = stream else {
        bail!("the TLS handshake failed");
    };
    let result = match startup {
        Ok(Startup::Cancel(key)) => {
            drop(pending);
            forward_cancel(&shared, key).await;
            return Ok(());
        }
        Ok(Startup::Session { params, sni, tls }) => match admit(&params, tls, &shared) {
            Ok(()) => match pending.establish() {
                Ok(_slot) => session(&mut stream, params, sni, &shared, &cancel).await,
                Err(refused) => Err(client_error(
                    pq_proto::TooManyConnections::SQLSTATE,
                    refused.to_string(),
                )),
            },
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            info!(%peer, "refusing the connection: {}", e.message);
            shared.metrics.refused.inc();
            let fields = ErrorFields::fatal(e.code, e.message);
            send_error_and_close(&mut stream, &fields, shared.startup_timeout).await
        }
    }
}

/// Send `fields` as an ErrorResponse and close the connection, giving up
/// after `timeout`: the client may be gone already, or not reading.
pub(crate) async fn send_error_and_close(
    stream: &mut Box<dyn Stream>,
    fields: &ErrorFields,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut out = BytesMut::new();
    BeMessage::ErrorResponse(fields)
        .write(&mut out)
        .context("encoding an ErrorResponse")?;
    let _ = tokio::time::timeout(timeout, async {
        let _ = stream.write_all(&out).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    })
    .await;
    Ok(())
}

/// Read startup-phase packets until a `StartupMessage` or `CancelRequest`,
/// answering `SSLRequest` (`S` and a TLS handshake when TLS is configured,
/// `N` otherwise) and `GSSENCRequest` (`N`), each at most once. A failed
/// TLS handshake leaves `stream` empty.
pub(crate) async fn read_startup(
    stream: &mut Option<Box<dyn Stream>>,
    buf: &mut BytesMut,
    tls: Option<&TlsAcceptor>,
) -> Result<Startup, ClientError> {
    let (mut ssl_seen, mut gss_seen) = (false, false);
    let mut sni = None;
    let mut tls_on = false;
    loop {
        let Some(s) = stream.as_mut() else {
            return Err(client_error("08006", "no connection"));
        };
        let packet = loop {
            match parse_startup(buf) {
                Ok(Some(packet)) => break packet,
                Ok(None) => {}
                Err(e) => {
                    return Err(client_error(
                        "08P01",
                        format!("invalid startup packet: {e}"),
                    ))
                }
            }
            let n = s
                .read_buf(buf)
                .await
                .map_err(|e| client_error("08006", format!("reading the startup packet: {e}")))?;
            if n == 0 {
                return Err(client_error(
                    "08P01",
                    "the connection ended inside the startup packet",
                ));
            }
        };
        let is_ssl = match packet {
            StartupPacket::Cancel(key) => return Ok(Startup::Cancel(key)),
            StartupPacket::Startup { params, .. } => {
                return Ok(Startup::Session {
                    params,
                    sni,
                    tls: tls_on,
                })
            }
            StartupPacket::SslRequest => true,
            StartupPacket::GssEncRequest => false,
        };
        let seen = if is_ssl { &mut ssl_seen } else { &mut gss_seen };
        if *seen {
            return Err(client_error("08P01", "repeated encryption request"));
        }
        *seen = true;
        if !buf.is_empty() {
            return Err(client_error(
                "08P01",
                "data sent after an encryption request before its answer",
            ));
        }
        let acceptor = tls.filter(|_| is_ssl);
        let answer: &[u8] = if acceptor.is_some() { b"S" } else { b"N" };
        let io = |e: std::io::Error| client_error("08006", e.to_string());
        s.write_all(answer).await.map_err(io)?;
        s.flush().await.map_err(io)?;
        if let Some(acceptor) = acceptor {
            let Some(plain) = stream.take() else {
                return Err(client_error("08006", "no connection"));
            };
            match acceptor.accept(plain).await {
                Ok(tls_stream) => {
                    sni = tls_stream.get_ref().1.server_name().map(str::to_owned);
                    tls_on = true;
                    *stream = Some(Box::new(tls_stream));
                }
                Err(e) => {
                    debug!("TLS handshake failed: {e}");
                    return Err(client_error("08006", format!("TLS handshake failed: {e}")));
                }
            }
        }
    }
}

/// Refuses, before anything is woken, what the proxy never lets through:
/// the superuser, and plaintext when TLS is required.
pub(crate) fn admit(params: &StartupParams, tls: bool, shared: &Shared) -> Result<(), ClientError> {
    if shared.require_tls && !tls {
        return Err(client_error(
            "28000",
            "this proxy requires TLS: connect with sslmode=require (or stronger)",
        ));
    }
    if params.user() == compute_api::spec::SUPERUSER {
        return Err(client_error(
            "28000",
            format!(
                "the superuser {} cannot connect through the proxy: log in as one of the database's roles",
                compute_api::spec::SUPERUSER
            ),
        ));
    }
    Ok(())
}

/// Route, wake, connect and relay one session.
async fn session(
    client: &mut Box<dyn Stream>,
    params: StartupParams,
    sni: Option<String>,
    shared: &Shared,
    cancel: &CancellationToken,
) -> Result<(), ClientError> {
    let routed = route(params.get("options"), sni.as_deref())
        .map_err(|e| client_error("08004", e.to_string()))?;
    let compute = shared
        .connect_compute(&routed.target)
        .await
        .map_err(|e| client_error(e.sqlstate(), e.to_string()))?;
    let address = compute.address;
    info!(target = %routed.target, endpoint = %compute.endpoint, %address, "relaying");
    let mut startup = BytesMut::new();
    encode_startup(forwarded_params(&params, &routed), &mut startup);
    shared.metrics.active.inc();
    let result = relay(
        client,
        Relay {
            compute: compute.stream,
            address,
            to_compute: startup,
            from_compute: BytesMut::new(),
        },
        shared,
        cancel,
    )
    .await;
    shared.metrics.active.dec();
    if let Err(e) = result {
        debug!("relay ended: {e:#}");
    }
    Ok(())
}

/// The startup parameters passed on to the compute: the client's, with
/// the routing words taken out of `options`.
pub(crate) fn forwarded_params<'a>(
    params: &'a StartupParams,
    routed: &'a Routed,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    params.iter().filter_map(|(k, v)| {
        if k == "options" {
            routed.options.as_deref().map(|o| (k, o))
        } else {
            Some((k, v))
        }
    })
}

/// A protocol 3.0 `StartupMessage` with `params`.
pub(crate) fn encode_startup<'a>(
    params: impl Iterator<Item = (&'a str, &'a str)>,
    out: &mut BytesMut,
) {
    let start = out.len();
    out.put_i32(0);
    out.put_i32(3 << 16);
    for (k, v) in params {
        out.put_slice(k.as_bytes());
        out.put_u8(0);
        out.put_slice(v.as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// A compute connection to relay a client to.
pub(crate) struct Relay {
    pub compute: TcpStream,
    pub address: SocketAddr,
    /// Bytes for the compute before the client's (the startup packet, or
    /// what a client pipelined after its password).
    pub to_compute: BytesMut,
    /// Bytes of the compute's already read (past an authentication done
    /// on the client's behalf).
    pub from_compute: BytesMut,
}

/// Send `to_compute`, then copy both ways until either side ends. The
/// compute's messages are read one by one up to the first `ReadyForQuery`,
/// to learn the session's cancel key; raw bytes are copied after that.
pub(crate) async fn relay(
    client: &mut Box<dyn Stream>,
    relay: Relay,
    shared: &Shared,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let Relay {
        mut compute,
        address,
        to_compute,
        from_compute,
    } = relay;
    compute.write_all(&to_compute).await?;
    let (compute_read, mut compute_write) = compute.split();
    let mut compute_read = std::io::Cursor::new(from_compute).chain(compute_read);
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let mut key: Option<CancelKey> = None;
    let to_compute = async {
        tokio::io::copy(&mut client_read, &mut compute_write).await?;
        compute_write.shutdown().await?;
        anyhow::Ok(())
    };
    let to_client = async {
        // The startup phase, message by message, up to ReadyForQuery.
        let mut body = Vec::new();
        loop {
            let header = read_startup_reply(&mut compute_read, &mut body).await?;
            if header[0] == b'K' && body.len() == 8 {
                let k = CancelKey {
                    process_id: i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                    secret_key: i32::from_be_bytes([body[4], body[5], body[6], body[7]]),
                };
                shared.cancel_map.insert(k, address);
                key = Some(k);
            }
            client_write.write_all(&header).await?;
            client_write.write_all(&body).await?;
            if matches!(header[0], b'Z' | b'E') {
                break;
            }
        }
        client_write.flush().await?;
        tokio::io::copy(&mut compute_read, &mut client_write).await?;
        client_write.shutdown().await?;
        anyhow::Ok(())
    };
    let result = tokio::select! {
        r = async { tokio::try_join!(to_compute, to_client).map(|_| ()) } => r,
        _ = cancel.cancelled() => Ok(()),
    };
    if let Some(k) = key {
        shared.cancel_map.remove(&k);
    }
    result
}

/// One message of the compute's startup phase: its header, and its body in
/// `body` (replaced). The body grows as its bytes arrive, not by the length
/// the header claims.
async fn read_startup_reply<R: AsyncRead + Unpin>(
    compute: &mut R,
    body: &mut Vec<u8>,
) -> anyhow::Result<[u8; 5]> {
    body.clear();
    let mut header = [0u8; 5];
    compute.read_exact(&mut header).await?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=MAX_STARTUP_REPLY_LEN).contains(&len) {
        bail!("the compute sent a message of {len} bytes during startup");
    }
    let want = (len - 4) as u64;
    compute.take(want).read_to_end(body).await?;
    if body.len() as u64 != want {
        bail!("the compute closed the connection inside a message");
    }
    Ok(header)
}

/// Pass a `CancelRequest` on to the compute whose session has that key;
/// an unknown key is ignored, as PostgreSQL does.
pub(crate) async fn forward_cancel(shared: &Shared, key: CancelKey) {
    let Some(address) = shared.cancel_map.get(&key) else {
        debug!("cancel request with an unknown key");
        return;
    };
    let sent = pq_proto::client::send_cancel_request(address, key);
    match tokio::time::timeout(shared.connect_timeout, sent).await {
        Ok(Ok(())) => {
            shared.metrics.cancels.inc();
            info!(%address, "forwarded a cancel request");
        }
        Ok(Err(e)) => warn!(%address, "forwarding a cancel request: {e}"),
        Err(_) => warn!(%address, "forwarding a cancel request timed out"),
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::ReadBuf;

    use super::*;

    /// Gives `data`, then nothing, ever: a peer gone quiet.
    struct Quiet(Vec<u8>);

    impl AsyncRead for Quiet {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.0.is_empty() {
                return Poll::Pending;
            }
            let n = self.0.len().min(out.remaining());
            out.put_slice(&self.0[..n]);
            self.0.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    fn header(tag: u8, body_len: usize) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body_len as u32 + 4).to_be_bytes());
        out
    }

    #[tokio::test]
    async fn a_claimed_length_is_not_reserved_before_the_bytes_arrive() {
        // The header claims the most allowed; 10 bytes follow, then silence.
        let mut data = header(b'S', MAX_STARTUP_REPLY_LEN - 4);
        data.extend_from_slice(&[1; 10]);
        let mut body = Vec::new();
        let mut compute = Quiet(data);
        let read = read_startup_reply(&mut compute, &mut body);
        let waited = tokio::time::timeout(Duration::from_millis(100), read).await;
        assert!(waited.is_err(), "a message without its body is not whole");
        assert_eq!(body.len(), 10);
        assert!(body.capacity() < 64 * 1024, "{} bytes", body.capacity());

        // A whole message is read whole.
        let mut data = header(b'S', 5000);
        data.extend_from_slice(&[7; 5000]);
        data.extend_from_slice(&header(b'Z', 1));
        data.push(b'I');
        let mut compute = Quiet(data);
        let got = read_startup_reply(&mut compute, &mut body).await.unwrap();
        assert_eq!((got[0], body.len()), (b'S', 5000));
        assert!(body.iter().all(|&b| b == 7));
        let got = read_startup_reply(&mut compute, &mut body).await.unwrap();
        assert_eq!((got[0], &body[..]), (b'Z', &b"I"[..]));
    }
}
