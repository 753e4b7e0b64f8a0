//! The upstream connections behind pingora's keep-alive pool, as far as switchboard can see them.
//!
//! pingora keeps idle upstream connections in a pool that is private to its connector: there is
//! no call to close the ones of one endpoint. When an endpoint leaves the table, no new request
//! chooses it, so its pooled connections are never reused, but they would stay open until the
//! pool's idle timeout. This registry learns every upstream connection from
//! `connected_to_upstream` (its fd and addresses) and which are busy (a request holds them from
//! that call until `logging`). After a table change, the idle ones to endpoints that are no longer
//! usable are shut down (`shutdown(2)`, both directions): pingora's pool watches every idle
//! connection for EOF and drops it at once. In-flight requests keep their connection and finish;
//! when their connection comes back to the pool, `logging` shuts it down too.
//!
//! An fd number can be reused by the kernel after pingora closes a connection, so an entry is
//! acted on only if the socket behind the fd still has the recorded local and peer address
//! (a TCP 4-tuple names one live connection); entries that fail that check are forgotten.
//! The same check, run periodically, keeps the pool-size gauge true.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Mutex;

use nix::sys::socket::{getpeername, getsockname, shutdown, Shutdown, SockaddrStorage};
use tables::{RouteTable, ServiceKey};

/// Where a connection goes: the backend service port and the endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub service: ServiceKey,
    pub port: u16,
    pub endpoint: SocketAddr,
    /// The `service` metric label (`ns/name:port`).
    pub label: std::sync::Arc<str>,
}

#[derive(Debug)]
struct Conn {
    target: Target,
    local: SocketAddr,
    /// Requests using it now (HTTP/1: 0 or 1; HTTP/2 multiplexes).
    busy: u32,
}

/// Counts for the pool gauge, by service label.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub idle: usize,
    pub busy: usize,
}

#[derive(Debug, Default)]
pub struct UpstreamConns {
    map: Mutex<HashMap<RawFd, Conn>>,
}

fn addr_of(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

/// The socket behind `fd` is still the connection `local` → `peer`.
fn same_socket(fd: RawFd, local: SocketAddr, peer: SocketAddr) -> bool {
    let l = getsockname::<SockaddrStorage>(fd).ok();
    let p = getpeername::<SockaddrStorage>(fd).ok();
    l.as_ref().and_then(addr_of) == Some(local) && p.as_ref().and_then(addr_of) == Some(peer)
}

/// Whether `t`'s endpoint is still one a request could be sent to in `table`.
pub fn usable_in(table: &RouteTable, t: &Target) -> bool {
    table
        .services
        .get(&t.service)
        .and_then(|s| s.port_by_number(t.port))
        .is_some_and(|p| {
            crate::endpoints::usable(&p.endpoints)
                .iter()
                .any(|e| e.addr() == t.endpoint)
        })
}

/// Shuts `c` down if `fd` is still that connection (pingora owns the fd and keeps it open while
/// pooled; shutdown(2) ends the connection and leaves closing the fd to pingora).
fn close(fd: RawFd, c: &Conn) -> bool {
    if !same_socket(fd, c.local, c.target.endpoint) {
        return false;
    }
    match shutdown(fd, Shutdown::Both) {
        Ok(()) => {
            tracing::debug!(
                endpoint = %c.target.endpoint,
                service = %c.target.label,
                "closed an idle upstream connection to an endpoint that left the table"
            );
            true
        }
        Err(e) => {
            tracing::debug!(fd, error = %e, "shutting down an idle upstream connection");
            false
        }
    }
}

impl UpstreamConns {
    /// A request got the connection `fd` to `target`: new (`reused` false: pingora just opened
    /// it, so any entry for this fd number is a closed connection's) or from the pool. Costs a
    /// `getsockname` per new connection, none per reuse.
    pub fn acquired(&self, fd: RawFd, target: Target, reused: bool) {
        let mut map = self.map.lock().unwrap();
        if reused {
            if let Some(c) = map.get_mut(&fd) {
                if c.target == target {
                    c.busy += 1;
                    return;
                }
            }
        }
        let Some(local) = getsockname::<SockaddrStorage>(fd)
            .ok()
            .as_ref()
            .and_then(addr_of)
        else {
            map.remove(&fd);
            return;
        };
        map.insert(
            fd,
            Conn {
                target,
                local,
                busy: 1,
            },
        );
    }

    /// The request that held `fd` is over (its connection is pooled or closed by now).
    /// Returns its target, so the caller can check it is still usable.
    pub fn released(&self, fd: RawFd) -> Option<Target> {
        let mut map = self.map.lock().unwrap();
        let c = map.get_mut(&fd)?;
        c.busy = c.busy.saturating_sub(1);
        Some(c.target.clone())
    }

    /// `released`, then shuts the connection down if it is idle now and `keep` rejects its target.
    pub fn release_and_close_if(&self, fd: RawFd, keep: impl Fn(&Target) -> bool) {
        let mut map = self.map.lock().unwrap();
        let Some(c) = map.get_mut(&fd) else { return };
        c.busy = c.busy.saturating_sub(1);
        if c.busy == 0 && !keep(&c.target) {
            let c = map.remove(&fd).expect("just seen");
            close(fd, &c);
        }
    }

    /// Shuts down every idle connection whose target `keep` rejects; returns how many.
    pub fn close_idle(&self, keep: impl Fn(&Target) -> bool) -> usize {
        let mut map = self.map.lock().unwrap();
        let mut closed = 0;
        map.retain(|&fd, c| {
            if c.busy > 0 || keep(&c.target) {
                return true;
            }
            if close(fd, c) {
                closed += 1;
            }
            false
        });
        closed
    }

    /// Forgets connections pingora has closed; the open ones by service label.
    pub fn sweep(&self) -> HashMap<std::sync::Arc<str>, PoolCounts> {
        let mut map = self.map.lock().unwrap();
        map.retain(|&fd, c| same_socket(fd, c.local, c.target.endpoint));
        let mut out: HashMap<std::sync::Arc<str>, PoolCounts> = HashMap::new();
        for c in map.values() {
            let e = out.entry(c.target.label.clone()).or_default();
            if c.busy > 0 {
                e.busy += 1;
            } else {
                e.idle += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;

    fn target(endpoint: SocketAddr) -> Target {
        Target {
            service: ServiceKey::new("default", "web"),
            port: 80,
            endpoint,
            label: "default/web:80".into(),
        }
    }

    #[test]
    fn closes_only_idle_connections_of_rejected_targets_and_only_the_recorded_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ep = l.local_addr().unwrap();
        let a = std::net::TcpStream::connect(ep).unwrap();
        let b = std::net::TcpStream::connect(ep).unwrap();
        let (mut a_srv, _) = l.accept().unwrap();
        let (mut b_srv, _) = l.accept().unwrap();
        let reg = UpstreamConns::default();
        reg.acquired(a.as_raw_fd(), target(ep), false);
        reg.acquired(b.as_raw_fd(), target(ep), false);
        assert_eq!(reg.released(a.as_raw_fd()), Some(target(ep)));
        let counts = reg.sweep();
        assert_eq!(counts["default/web:80"], PoolCounts { idle: 1, busy: 1 });
        // Kept targets are left alone.
        assert_eq!(reg.close_idle(|_| true), 0);
        // The idle one goes, the busy one stays.
        assert_eq!(reg.close_idle(|_| false), 1);
        let mut buf = [0u8; 1];
        assert_eq!(a_srv.read(&mut buf).unwrap(), 0, "idle connection closed");
        b_srv
            .set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        assert!(b_srv.read(&mut buf).is_err(), "busy connection left open");
        // Once released, the busy one is closed by the next pass.
        reg.released(b.as_raw_fd());
        assert_eq!(reg.close_idle(|_| false), 1);
        assert_eq!(b_srv.read(&mut buf).unwrap(), 0);
    }

    #[test]
    fn a_reused_fd_number_is_not_touched() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ep = l.local_addr().unwrap();
        let a = std::net::TcpStream::connect(ep).unwrap();
        let (_a_srv, _) = l.accept().unwrap();
        let fd = a.as_raw_fd();
        let reg = UpstreamConns::default();
        reg.acquired(fd, target(ep), false);
        reg.released(fd);
        drop(a);
        // Another connection now likely holds the same fd number.
        let c = std::net::TcpStream::connect(ep).unwrap();
        let (mut c_srv, _) = l.accept().unwrap();
        assert_eq!(reg.close_idle(|_| false), 0);
        c_srv
            .set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 1];
        assert!(c_srv.read(&mut buf).is_err(), "unrelated socket left open");
        drop(c);
        assert!(reg.sweep().is_empty());
    }
}
