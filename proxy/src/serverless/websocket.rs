//! PostgreSQL over WebSocket: the wire protocol in binary frames (frames
//! need not align with messages), one client session per socket, as
//! Neon's serverless driver connects.
//!
//! The proxy authenticates the client itself: it asks for a cleartext
//! password (the socket is TLS when the proxy has a certificate), logs in
//! to the compute with it (SCRAM), and tells the client
//! `AuthenticationOk` only once the compute accepted it; then it relays
//! as the PostgreSQL port does. A client that pipelines its startup,
//! password and first query in one frame is served: what follows the
//! password is passed on after the login.
//!
//! Routing: the startup packet's `options`, else the first label of the
//! host in the `address` query parameter (the driver's `/v2?address=…`),
//! else of the `Host` header, else the default branch.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use pq_proto::{ErrorFields, StartupParams};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};

use crate::connection::{
    admit, forward_cancel, forwarded_params, read_startup, relay, send_error_and_close, Relay,
    Startup, Stream,
};
use crate::routing::route;
use crate::serverless::{ClientConnection, Serverless};

/// The largest WebSocket message accepted from a client.
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// The longest password message accepted.
const MAX_PASSWORD_MESSAGE: usize = 16 << 10;

/// A WebSocket as a byte stream: binary frames in, binary frames out.
pub struct WebSocketStream {
    socket: WebSocket,
    /// The rest of the message being read.
    pending: Bytes,
    closed: bool,
}

impl WebSocketStream {
    pub fn new(socket: WebSocket) -> WebSocketStream {
        WebSocketStream {
            socket,
            pending: Bytes::new(),
            closed: false,
        }
    }
}

impl AsyncRead for WebSocketStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(out.remaining());
                out.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.closed {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.socket.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text frame: the PostgreSQL protocol goes in binary frames",
                    )))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => self.closed = true,
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl AsyncWrite for WebSocketStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.socket.poll_ready_unpin(cx)).map_err(io::Error::other)?;
        self.socket
            .start_send_unpin(Message::Binary(Bytes::copy_from_slice(data)))
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_flush_unpin(cx).map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.socket.poll_close_unpin(cx).map_err(io::Error::other)
    }
}

/// Any path: a WebSocket upgrade, or 404.
pub async fn upgrade_or_not_found(
    State(state): State<Arc<Serverless>>,
    Extension(connection): Extension<ClientConnection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Ok(upgrade) = upgrade else {
        let body = serde_json::json!({
            "message": "no such endpoint: POST /sql, or a WebSocket upgrade",
            "code": null,
        });
        let mut response = (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::HeaderValue::from_static("*"),
        );
        return response;
    };
    let hint = routing_host(&uri, &headers);
    let cancel = state.cancel.clone();
    upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            let span = info_span!("websocket", peer = %connection.peer);
            async move {
                state.websockets.inc();
                if let Err(e) = session(socket, hint, connection.tls, &state, &cancel).await {
                    debug!("WebSocket session ended: {e:#}");
                }
            }
            .instrument(span)
        })
}

/// The host that names the endpoint: the `address` query parameter's,
/// else the `Host` header's; without its port.
fn routing_host(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let from_query = uri.query().and_then(|query| {
        query.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == "address").then(|| value.to_owned())
        })
    });
    let address = from_query.or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    })?;
    Some(host_without_port(&address).to_owned())
}

fn host_without_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => address,
    }
}

fn fatal(code: &str, message: impl Into<String>) -> ErrorFields {
    ErrorFields::fatal(code, message)
}

/// One session: startup, password, login to the compute, relay.
async fn session(
    socket: WebSocket,
    hint: Option<String>,
    tls: bool,
    state: &Serverless,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let shared = &state.shared;
    let mut stream: Option<Box<dyn Stream>> = Some(Box::new(WebSocketStream::new(socket)));
    let mut buf = BytesMut::new();
    let startup = tokio::time::timeout(
        shared.startup_timeout,
        read_startup(&mut stream, &mut buf, None),
    )
    .await;
    let Some(mut client) = stream else {
        anyhow::bail!("the connection is gone");
    };
    let params = match startup {
        Err(_) => Err(fatal("08P01", "timed out waiting for the startup packet")),
        Ok(Err(e)) => Err(fatal(e.code, e.message)),
        Ok(Ok(Startup::Cancel(key))) => {
            forward_cancel(shared, key).await;
            return Ok(());
        }
        Ok(Ok(Startup::Session { params, .. })) => Ok(params),
    };
    let login = match params {
        Ok(params) => login(&mut client, &mut buf, params, hint, tls, state).await,
        Err(e) => Err(e),
    };
    let relayed = match login {
        Ok(relayed) => relayed,
        Err(fields) => {
            info!("refusing a WebSocket session: {}", fields);
            shared.metrics.refused.inc();
            return send_error_and_close(&mut client, &fields, shared.startup_timeout).await;
        }
    };
    shared.metrics.active.inc();
    let result = relay(&mut client, relayed, shared, cancel).await;
    shared.metrics.active.dec();
    result
}

/// Asks the client for its password, logs in to the compute with it and
/// tells the client it is in. Returns the compute connection to relay.
async fn login(
    client: &mut Box<dyn Stream>,
    buf: &mut BytesMut,
    params: StartupParams,
    hint: Option<String>,
    tls: bool,
    state: &Serverless,
) -> Result<Relay, ErrorFields> {
    let shared = &state.shared;
    admit(&params, tls, shared).map_err(|e| fatal(e.code, e.message))?;
    let routed =
        route(params.get("options"), hint.as_deref()).map_err(|e| fatal("08004", e.to_string()))?;
    let mut request = BytesMut::new();
    request.put_u8(b'R');
    request.put_i32(8);
    request.put_i32(3); // AuthenticationCleartextPassword
    let io = |e: io::Error| fatal("08006", e.to_string());
    client.write_all(&request).await.map_err(io)?;
    client.flush().await.map_err(io)?;
    let password = tokio::time::timeout(shared.startup_timeout, read_password(client, buf))
        .await
        .map_err(|_| fatal("08P01", "timed out waiting for the password"))??;
    let compute = shared
        .connect_compute(&routed.target)
        .await
        .map_err(|e| fatal(e.sqlstate(), e.to_string()))?;
    info!(target = %routed.target, endpoint = %compute.endpoint, address = %compute.address, "relaying a WebSocket session");
    let address = compute.address;
    let forwarded: Vec<(&str, &str)> = forwarded_params(&params, &routed).collect();
    let authenticated = tokio::time::timeout(
        shared.startup_timeout,
        pq_proto::client::authenticate_stream(compute.stream, &forwarded, Some(&password)),
    )
    .await
    .map_err(|_| fatal("08006", "the compute did not finish the login in time"))?;
    let (compute, from_compute) = authenticated.map_err(|e| match e {
        pq_proto::ClientError::Server(fields) => *fields,
        other => fatal("28000", format!("logging in to the compute: {other}")),
    })?;
    let mut ok = BytesMut::new();
    ok.put_u8(b'R');
    ok.put_i32(8);
    ok.put_i32(0); // AuthenticationOk
    client.write_all(&ok).await.map_err(io)?;
    Ok(Relay {
        compute,
        address,
        to_compute: buf.split(),
        from_compute,
    })
}

/// Reads the client's `PasswordMessage` (from what it pipelined, or from
/// the socket); `buf` keeps whatever follows it.
async fn read_password(
    client: &mut Box<dyn Stream>,
    buf: &mut BytesMut,
) -> Result<String, ErrorFields> {
    loop {
        if buf.len() >= 5 {
            if buf[0] != b'p' {
                return Err(fatal(
                    "08P01",
                    format!(
                        "expected a password message, got message type {:?}",
                        char::from(buf[0])
                    ),
                ));
            }
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if !(5..=MAX_PASSWORD_MESSAGE).contains(&len) {
                return Err(fatal(
                    "08P01",
                    format!("invalid password message length {len}"),
                ));
            }
            if buf.len() > len {
                let message = buf.split_to(len + 1);
                let body = &message[5..];
                let Some((&0, text)) = body.split_last() else {
                    return Err(fatal("08P01", "the password is not NUL-terminated"));
                };
                let password = std::str::from_utf8(text)
                    .map_err(|_| fatal("08P01", "the password is not UTF-8"))?;
                if password.contains('\0') {
                    return Err(fatal("08P01", "the password contains a NUL byte"));
                }
                return Ok(password.to_owned());
            }
        }
        let n = client
            .read_buf(buf)
            .await
            .map_err(|e| fatal("08006", format!("reading the password: {e}")))?;
        if n == 0 {
            return Err(fatal("08P01", "the connection ended before the password"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_without_ports() {
        assert_eq!(host_without_port("b.localtest.me:5432"), "b.localtest.me");
        assert_eq!(host_without_port("localhost"), "localhost");
        assert_eq!(host_without_port("[::1]:4444"), "::1");
        assert_eq!(host_without_port("::1"), "::1");
        assert_eq!(host_without_port("[::1"), "::1");
    }

    #[test]
    fn routing_host_prefers_the_address_parameter() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "main.localtest.me:4444".parse().unwrap());
        let uri: Uri = "/v2?address=heikki.localtest.me:5432".parse().unwrap();
        assert_eq!(
            routing_host(&uri, &headers).as_deref(),
            Some("heikki.localtest.me")
        );
        let uri: Uri = "/v2".parse().unwrap();
        assert_eq!(
            routing_host(&uri, &headers).as_deref(),
            Some("main.localtest.me")
        );
        assert_eq!(routing_host(&uri, &HeaderMap::new()), None);
    }
}
