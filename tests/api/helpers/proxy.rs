//! A TCP proxy in front of the database that a test can cut, slow down and restore.
//!
//! Cut: every connection, open or new, stalls (bytes stop flowing, nothing is closed), which is
//! how a dead network or a hung server looks to a client. Restore: stalled connections are
//! closed and new ones flow again. Slow: every chunk from the database waits before delivery.
//! Stall the open ones: the connections open now stall and new ones flow, as when a NAT, a
//! firewall or a failover drops connections without a reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    /// Bumped on restore: connections from an older generation close.
    generation: watch::Sender<u64>,
    delay: watch::Sender<Duration>,
    /// Connections numbered below this stall.
    stall_below: watch::Sender<u64>,
    /// How many connections were accepted so far: the next one's number.
    accepted: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, _) = watch::channel(true);
        let (generation, _) = watch::channel(0u64);
        let (delay, _) = watch::channel(Duration::ZERO);
        let (stall_below, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let accept = {
            let (open, generation, delay) = (open.clone(), generation.clone(), delay.clone());
            let (stall_below, accepted) = (stall_below.clone(), Arc::clone(&accepted));
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let number = accepted.fetch_add(1, Ordering::SeqCst);
                    let stalled = stall_below.subscribe();
                    tokio::spawn(relay(
                        client,
                        target,
                        open.subscribe(),
                        generation.subscribe(),
                        delay.subscribe(),
                        async move {
                            let mut stalled = stalled;
                            let _ = stalled.wait_for(|below| number < *below).await;
                        },
                    ));
                }
            })
        };
        Self {
            addr,
            open,
            generation,
            delay,
            stall_below,
            accepted,
            accept,
        }
    }

    /// A database URL like `url` but pointing at this proxy.
    pub fn url_for(&self, url: &str) -> String {
        let mut url = url::Url::parse(url).unwrap();
        url.set_host(Some(&self.addr.ip().to_string())).unwrap();
        url.set_port(Some(self.addr.port())).unwrap();
        url.to_string()
    }

    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    pub fn restore(&self) {
        self.generation.send_modify(|g| *g += 1);
        self.open.send_replace(true);
    }

    /// The connections open now stall (bytes stop flowing, nothing is closed); new ones flow.
    pub fn stall_open_connections(&self) {
        self.stall_below
            .send_replace(self.accepted.load(Ordering::SeqCst));
    }

    /// Every chunk the database sends waits `delay` before it is delivered.
    pub fn slow_down(&self, delay: Duration) {
        self.delay.send_replace(delay);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(
    client: TcpStream,
    target: SocketAddr,
    mut open: watch::Receiver<bool>,
    mut generation: watch::Receiver<u64>,
    delay: watch::Receiver<Duration>,
    stalled: impl std::future::Future<Output = ()>,
) {
    generation.mark_unchanged();
    // A connection made while cut stalls from the start.
    if !*open.borrow_and_update() {
        let _ = generation.changed().await;
        return;
    }
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let no_delay = watch::channel(Duration::ZERO).1;
    tokio::select! {
        () = pipe(&mut client_read, &mut server_write, no_delay) => return,
        () = pipe(&mut server_read, &mut client_write, delay) => return,
        _ = open.wait_for(|open| !*open) => {}
        () = stalled => {}
    }
    // Cut: the sockets stay open, silent, until restored; then they close with this task.
    let _ = generation.changed().await;
}

async fn pipe(from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf, delay: watch::Receiver<Duration>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        let wait = *delay.borrow();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
