//! A fault-injecting TCP proxy for partitions between processes.
//!
//! Each cluster node's internal gRPC address is fronted by a [`FaultProxy`]: peers
//! dial the proxy (it is the node's `advertise_grpc`), the proxy relays to the node.
//! Every node sends from its own loopback source address (`cluster.source_address`,
//! e.g. `127.0.0.11` for node 1), so a proxy knows which peer a connection comes from
//! and can cut single links.
//!
//! A cut link is a black hole, as in a real partition: connections stay open but no
//! byte crosses (bytes already read are held back), new connections are accepted and
//! then stall. When the link heals, held bytes flow again, unless an endpoint gave up
//! on the connection meanwhile.
//!
//! [`Partitions`] holds the proxies of a whole cluster and isolates or heals nodes.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::net::IpAddr;
use std::net::SocketAddr;

use anyhow::Context;
use anyhow::Result;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which traffic a proxy stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Cuts {
    /// Everything to the target.
    all: bool,
    /// Connections from these source addresses.
    sources: HashSet<IpAddr>,
}

impl Cuts {
    fn blocks(&self, source: IpAddr) -> bool {
        self.all || self.sources.contains(&source)
    }
}

/// A TCP relay from a loopback port to `target` whose links can be cut and healed.
/// Stops relaying when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    cuts: watch::Sender<Cuts>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listen on a free port of 127.0.0.1 and relay to `target`.
    pub async fn start(target: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the proxy")?;
        let addr = listener.local_addr()?;
        let (cuts, rx) = watch::channel(Cuts::default());
        let accept = tokio::spawn(accept_loop(listener, target, rx));
        Ok(FaultProxy { addr, cuts, accept })
    }

    /// Where peers connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop every byte to and from the target.
    pub fn cut_all(&self) {
        self.cuts.send_modify(|c| c.all = true);
    }

    /// Stop the traffic of connections from `source`.
    pub fn cut_from(&self, source: IpAddr) {
        self.cuts.send_modify(|c| {
            c.sources.insert(source);
        });
    }

    /// Let everything through again.
    pub fn heal(&self) {
        self.cuts.send_replace(Cuts::default());
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, cuts: watch::Receiver<Cuts>) {
    let mut relays = tokio::task::JoinSet::new();
    loop {
        let (inbound, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "proxy accept failed");
                continue;
            }
        };
        let cuts = cuts.clone();
        // The relays die with this task (and so with the proxy).
        relays.spawn(async move {
            // Even the connection to the target waits while the link is cut.
            if wait_open(&cuts, peer.ip()).await.is_err() {
                return;
            }
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            let source = peer.ip();
            tokio::join!(pump(ri, wo, cuts.clone(), source), pump(ro, wi, cuts, source));
        });
        // Reap finished relays so the set does not grow with every connection.
        while relays.try_join_next().is_some() {}
    }
}

/// Wait until traffic from `source` may pass; `Err` when the proxy is gone.
async fn wait_open(cuts: &watch::Receiver<Cuts>, source: IpAddr) -> Result<(), ()> {
    let mut cuts = cuts.clone();
    cuts.wait_for(|c| !c.blocks(source)).await.map(|_| ()).map_err(|_| ())
}

/// Copy one direction, holding each chunk back while the link is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cuts: watch::Receiver<Cuts>,
    source: IpAddr,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if wait_open(&cuts, source).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The proxies in front of every node of a cluster, by node id.
pub struct Partitions {
    proxies: BTreeMap<u64, FaultProxy>,
}

impl Partitions {
    /// The loopback source address node `id` sends from (its `cluster.source_address`).
    pub fn source_of(id: u64) -> IpAddr {
        IpAddr::from([127, 0, 1, u8::try_from(id).unwrap_or(u8::MAX)])
    }

    /// A proxy in front of each node's real gRPC address, by node id.
    pub async fn start(targets: &BTreeMap<u64, SocketAddr>) -> Result<Partitions> {
        let mut proxies = BTreeMap::new();
        for (id, target) in targets {
            proxies.insert(*id, FaultProxy::start(*target).await?);
        }
        Ok(Partitions { proxies })
    }

    /// The address peers dial for node `id` (its `advertise_grpc`).
    pub fn addr_of(&self, id: u64) -> Option<SocketAddr> {
        self.proxies.get(&id).map(FaultProxy::addr)
    }

    /// Cut node `id` off from every other node, in both directions.
    pub fn isolate(&self, id: u64) {
        for (other, proxy) in &self.proxies {
            if *other == id {
                proxy.cut_all();
            } else {
                proxy.cut_from(Self::source_of(id));
            }
        }
    }

    /// Restore every link.
    pub fn heal(&self) {
        self.proxies.values().for_each(FaultProxy::heal);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> Option<Vec<u8>> {
        stream.write_all(msg).await.ok()?;
        let mut got = vec![0u8; msg.len()];
        match tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut got)).await {
            Ok(Ok(_)) => Some(got),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_cut_link_holds_bytes_until_healed() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
        let mut a = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut a, b"one").await.as_deref(), Some(&b"one"[..]));

        proxy.cut_from(IpAddr::from([127, 0, 0, 1]));
        assert_eq!(round_trip(&mut a, b"two").await, None, "bytes crossed a cut link");
        // A connection from another source still passes.
        let other = tokio::net::TcpSocket::new_v4().expect("socket");
        other.bind("127.0.1.9:0".parse().expect("addr")).expect("bind source");
        let mut b = other.connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut b, b"three").await.as_deref(), Some(&b"three"[..]));

        proxy.cut_all();
        assert_eq!(round_trip(&mut b, b"four").await, None);

        proxy.heal();
        let mut held = vec![0u8; 3];
        tokio::time::timeout(Duration::from_secs(2), a.read_exact(&mut held))
            .await
            .expect("held bytes arrive after healing")
            .expect("read");
        assert_eq!(&held, b"two");
        assert_eq!(round_trip(&mut a, b"five").await.as_deref(), Some(&b"five"[..]));
    }
}
