//! A TCP proxy in front of the database that a test can cut and restore.
//!
//! Cut: every connection, open or new, stalls (bytes stop flowing, nothing is closed), which is
//! how a dead network or a hung server looks to a client. Restore: stalled connections are
//! closed and new ones flow again.

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub addr: SocketAddr,
    open: watch::Sender<bool>,
    /// Bumped on restore: connections from an older generation close.
    generation: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, _) = watch::channel(true);
        let (generation, _) = watch::channel(0u64);
        let accept = {
            let open = open.clone();
            let generation = generation.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(relay(
                        client,
                        target,
                        open.subscribe(),
                        generation.subscribe(),
                    ));
                }
            })
        };
        Self {
            addr,
            open,
            generation,
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
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    mut open: watch::Receiver<bool>,
    mut generation: watch::Receiver<u64>,
) {
    generation.mark_unchanged();
    // A connection made while cut stalls from the start.
    if !*open.borrow_and_update() {
        let _ = generation.changed().await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => return,
        _ = open.wait_for(|open| !*open) => {}
    }
    // Cut: hold both sockets silently until restored, then close them.
    let _ = generation.changed().await;
}
