//! A TCP relay between a client and the daemon that a test can freeze and cut: the flaky
//! link of an edge device. It forwards bytes as they are (TLS included) and never parses
//! them, so tests decide when to cut from the daemon's own state.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// One relayed connection: its two sockets and whether its answers are held back.
struct Link {
    client: TcpStream,
    server: TcpStream,
    frozen: Arc<AtomicBool>,
}

/// A relay listening on a free loopback port, forwarding to `target`.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    links: Arc<Mutex<Vec<Link>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Relay {
    /// Starts relaying to `target`.
    pub fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let links: Arc<Mutex<Vec<Link>>> = Arc::default();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (l, a) = (links.clone(), accepted.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let frozen = Arc::new(AtomicBool::new(false));
                if let (Ok(c1), Ok(c2), Ok(s1), Ok(s2)) = (
                    client.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                    server.try_clone(),
                ) {
                    let never = Arc::new(AtomicBool::new(false));
                    std::thread::spawn(move || pump(c1, s1, &never));
                    let f = frozen.clone();
                    std::thread::spawn(move || pump(s2, c2, &f));
                    if let Ok(mut links) = l.lock() {
                        links.push(Link {
                            client,
                            server,
                            frozen,
                        });
                    }
                }
            }
        });
        Ok(Self {
            addr,
            links,
            accepted,
        })
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// From now on, the daemon's bytes on the open connections are dropped, not
    /// forwarded (the client waits for an answer that never comes). New connections
    /// are not affected.
    pub fn freeze(&self) {
        if let Ok(links) = self.links.lock() {
            for link in links.iter() {
                link.frozen.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Cuts every open connection (both ways), as a link that goes down does.
    pub fn cut(&self) {
        if let Ok(mut links) = self.links.lock() {
            for link in links.drain(..) {
                let _ = link.client.shutdown(Shutdown::Both);
                let _ = link.server.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Copies `from` to `to` until either side closes; drops the bytes while `frozen`.
fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if frozen.load(Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
