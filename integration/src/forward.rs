//! A TCP port inside a network namespace relayed to an address outside it.

use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;

use crate::netns::NetNs;

/// Makes the registry, which listens on the host's loopback, reachable at
/// 127.0.0.1:`port` inside a node namespace: the daemons pull from inside
/// their namespaces, whose loopback is their own. The listening socket is
/// made inside the namespace; connections to the registry are made from
/// threads that stay outside.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    pub fn start(ns: &NetNs, port: u16, upstream: SocketAddr) -> Result<Forwarder> {
        let listener =
            berth_cni::netns::run_in(&ns.path(), move || TcpListener::bind(("127.0.0.1", port)))??;
        // Polled, so that the thread notices `stop`.
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if client.set_nonblocking(false).is_ok() {
                            std::thread::spawn(move || relay(client, upstream));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Forwarder {
            stop,
            thread: Some(thread),
        })
    }

    /// A port free on the loopback of `ns`.
    pub fn port(ns: &NetNs) -> Result<u16> {
        let l = berth_cni::netns::run_in(&ns.path(), || TcpListener::bind("127.0.0.1:0"))??;
        Ok(l.local_addr()?.port())
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn relay(client: TcpStream, upstream: SocketAddr) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || pipe(c2, s2));
    pipe(server, client);
    let _ = up.join();
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}
