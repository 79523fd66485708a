//! HTTP/2 clients (prior knowledge) built on the `h2` crate, for what a test must control itself:
//! the windows it grants, the frames it receives, and whether it reads at all.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

type Driver = JoinHandle<Result<(), h2::Error>>;

/// An HTTP/2 client handle (prior knowledge) to `addr`, ready to send, whose client grants each
/// stream a window of `window` bytes and never more unless a test releases capacity; and the
/// connection's driver, which ends when the server closes the connection.
pub async fn h2_client(addr: SocketAddr, window: u32) -> (h2::client::SendRequest<Bytes>, Driver) {
    handshake(TcpStream::connect(addr).await.unwrap(), window).await
}

/// [`h2_client`] with HTTP/2's own initial window, which a test can stop reading through its
/// [`Wire`].
pub async fn h2_recorded_client(
    addr: SocketAddr,
) -> (h2::client::SendRequest<Bytes>, Driver, Arc<Wire>) {
    let wire = Arc::new(Wire::default());
    let stream = Recorded {
        stream: TcpStream::connect(addr).await.unwrap(),
        wire: wire.clone(),
    };
    let (client, driver) = handshake(stream, 65_535).await;
    (client, driver, wire)
}

async fn handshake(
    io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    window: u32,
) -> (h2::client::SendRequest<Bytes>, Driver) {
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake(io)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    (client.ready().await.unwrap(), driver)
}

/// Sends `GET url` with `key` on `client` (from [`h2_client`]) and waits for its answer's head; its
/// body is read as the test chooses (dropped, its stream is reset).
pub async fn h2_get_as(
    client: &mut h2::client::SendRequest<Bytes>,
    url: &str,
    key: &str,
) -> axum::http::Response<h2::RecvStream> {
    let request = axum::http::Request::get(url)
        .header("authorization", format!("Bearer {key}"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    response.await.unwrap()
}

/// A client's side of its connection: a switch that stops it reading.
#[derive(Default)]
pub struct Wire {
    deaf: AtomicBool,
}

impl Wire {
    /// From now on the client reads nothing: it answers no PING, and sees no frame.
    pub fn stop_reading(&self) {
        self.deaf.store(true, Ordering::Relaxed);
    }
}

/// A connection whose client reads only while its [`Wire`] lets it.
struct Recorded {
    stream: TcpStream,
    wire: Arc<Wire>,
}

impl AsyncRead for Recorded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.wire.deaf.load(Ordering::Relaxed) {
            // Never woken again: the test drops the client when it is done.
            return Poll::Pending;
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Over a connection of raw frames: `GET /healthz`, then nothing until the server closes the
/// connection, answering its SETTINGS and PINGs as any client does; the last stream id of each
/// GOAWAY the server sent, in order. (The h2 crate's client closes a connection itself once it
/// is told GOAWAY and has nothing in flight, before a server's last GOAWAY can come.)
pub async fn goaways_of_an_idle_connection(addr: SocketAddr) -> Vec<u32> {
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const GOAWAY: u8 = 0x7;
    const ACK: u8 = 0x1;
    const END_STREAM_AND_HEADERS: u8 = 0x5;
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut bytes = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        bytes.extend([kind, flags]);
        bytes.extend(stream.to_be_bytes());
        bytes.extend(payload);
        bytes
    };
    // HPACK: `:method GET` and `:scheme http` from the static table, `:path` and `:authority`
    // as literals of its names (indices 4 and 1), not indexed.
    let authority = addr.to_string();
    let mut block = vec![0x82, 0x86, 0x04, 8];
    block.extend(b"/healthz");
    block.extend([0x01, authority.len() as u8]);
    block.extend(authority.as_bytes());
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(frame(SETTINGS, 0, 0, &[]));
    opening.extend(frame(HEADERS, END_STREAM_AND_HEADERS, 1, &block));
    stream.write_all(&opening).await.unwrap();
    let mut goaways = Vec::new();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if stream.read_exact(&mut head).await.is_err() {
                return;
            }
            let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; length];
            stream.read_exact(&mut payload).await.unwrap();
            let (kind, acked) = (head[3], head[4] & ACK != 0);
            let answer = match kind {
                SETTINGS if !acked => frame(SETTINGS, ACK, 0, &[]),
                PING if !acked => frame(PING, ACK, 0, &payload),
                GOAWAY => {
                    let last = u32::from_be_bytes(payload[..4].try_into().unwrap());
                    goaways.push(last & 0x7fff_ffff);
                    continue;
                }
                _ => continue,
            };
            // The server may have closed already.
            let _ = stream.write_all(&answer).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("the server closes the connection");
    goaways
}
