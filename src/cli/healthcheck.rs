//! `healthcheck`: a raw-TCP `GET /healthz` for container health checks in images without curl.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Succeeds when the service on `listen_addr` answers `GET /healthz` with 200 within 3 s.
pub(super) async fn check(listen_addr: SocketAddr) -> anyhow::Result<()> {
    // A server bound to every interface is reached on loopback.
    let mut addr = listen_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        Ok::<_, std::io::Error>(head)
    };
    let head = tokio::time::timeout(Duration::from_secs(3), check)
        .await
        .map_err(|_| anyhow!("unhealthy: {addr} did not answer within 3 s"))?
        .with_context(|| format!("unhealthy: cannot reach {addr}"))?;
    ensure!(
        head.starts_with(b"HTTP/1.1 200"),
        "unhealthy: {addr} answered {}",
        String::from_utf8_lossy(&head)
    );
    Ok(())
}
