//! Optional TLS on the gRPC port (`--tls-cert`, `--tls-key`), with rustls. The certificate
//! is reloaded when its files change (cert-manager rotates them in place), so a rotation needs
//! no restart; a pair that does not load is logged and the previous one kept. Plaintext stays
//! the default, for mesh sidecars that terminate TLS themselves.
//!
//! Handshakes run in tasks of their own, never awaited by the accept loop: a connection that
//! sends nothing is closed after [`FIRST_BYTE_TIMEOUT`], a handshake not done after
//! [`HANDSHAKE_TIMEOUT`], and a peer or the whole port at its limit of handshakes in progress
//! sheds its oldest one for the new connection (see [`Handshakes`]).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv6Addr},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, RwLock},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::oneshot,
};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A TLS handshake not finished within this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that sends nothing within this is closed. A client sends its ClientHello as
/// soon as it is connected; 2 s leaves room for one retransmission (the first RTO is 1 s).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// Handshakes in progress at most, on the port and from one peer ([`peer_key`]).
const MAX_HANDSHAKES: usize = 256;
const MAX_HANDSHAKES_PER_PEER: usize = 32;

/// Where the certificate and key are, and how often their files are checked for changes.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub check_every: Duration,
}

/// The current certificate, swapped in place when the files change.
#[derive(Debug)]
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
    files: TlsFiles,
    /// The files' modification times when last loaded.
    loaded: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(crate::read(&self.current).clone())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The certificate chain and key of `files`, checked to belong together.
fn load(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--tls-cert {}: no PEM certificate in it",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("--tls-key {}: {e}", files.key.display()))?;
    CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider()).map_err(|e| {
        format!(
            "--tls-cert and --tls-key do not make a usable pair ({e}); the key must be the certificate's"
        )
    })
}

impl Certificates {
    /// Loads the pair now: a start-up error names the file at fault.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, String> {
        let stamps = (modified(&files.cert), modified(&files.key));
        let key = load(&files)?;
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(key)),
            files,
            loaded: RwLock::new(stamps),
        }))
    }

    /// Reloads the pair if either file changed since it was loaded; keeps the current one if
    /// the new files do not load (a rotation half-written, a key for another certificate).
    pub fn reload_if_changed(&self) {
        let stamps = (modified(&self.files.cert), modified(&self.files.key));
        if *crate::read(&self.loaded) == stamps {
            return;
        }
        match load(&self.files) {
            Ok(key) => {
                *crate::write(&self.current) = Arc::new(key);
                *crate::write(&self.loaded) = stamps;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(error) => {
                tracing::warn!(%error, "TLS files changed but do not load; keeping the current certificate")
            }
        }
    }

    /// Checks the files every `check_every` until `stop`.
    pub async fn watch(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut ticks = tokio::time::interval(self.files.check_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.reload_if_changed(),
                () = stop.cancelled() => return,
            }
        }
    }

    /// A rustls server configuration that asks this store for its certificate, speaking h2.
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map(|b| b.with_no_client_auth().with_cert_resolver(self.clone()))
                .unwrap_or_else(|_| {
                    // The ring provider supports the default versions; kept total anyway.
                    ServerConfig::builder()
                        .with_no_client_auth()
                        .with_cert_resolver(self.clone())
                });
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }
}

/// A connection of the gRPC port: plaintext, or TLS over TCP.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Self::Plain(tcp) => tcp.connect_info(),
            Self::Tls(tls) => tls.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The handshakes in progress, by age and by peer. At a limit the new connection goes ahead
/// and the oldest handshake (the peer's, or the port's) is shed, rather than the new one
/// refused: a real handshake takes a round trip or two, so the oldest are the stalled ones,
/// and a flood must outpace a real client's handshake to cut it, where refusing new ones
/// would let a few hundred stalled sockets, renewed every [`FIRST_BYTE_TIMEOUT`], lock
/// everyone out. The per-peer limit keeps one peer from shedding the others' handshakes.
///
/// Behind a mesh sidecar every peer is 127.0.0.1, but TLS is off there (the sidecar
/// terminates it) and plaintext connections are not counted here. Where TLS is on behind a
/// proxy that hides the clients' addresses, they share one key and so its 32 places; as the
/// newest handshake always goes ahead, a real one is still cut only by 32 newer ones
/// arriving while it runs.
struct Handshakes {
    pending: Mutex<Pending>,
    max: usize,
    max_per_peer: usize,
}

#[derive(Default)]
struct Pending {
    next: u64,
    /// Each handshake's peer and the sender whose drop sheds it, by age (ids increase).
    by_age: BTreeMap<u64, (IpAddr, oneshot::Sender<()>)>,
    by_peer: HashMap<IpAddr, BTreeSet<u64>>,
}

impl Pending {
    /// Forgets handshake `id`; if it is still running, dropping its sender sheds it.
    fn remove(&mut self, id: u64) {
        let Some((peer, _shed)) = self.by_age.remove(&id) else {
            return;
        };
        if let Some(ids) = self.by_peer.get_mut(&peer) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
    }
}

/// A handshake's place; given up when dropped. `shed` resolves when a newer one took it.
struct Ticket {
    handshakes: Arc<Handshakes>,
    id: u64,
    shed: oneshot::Receiver<()>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        crate::lock(&self.handshakes.pending).remove(self.id);
    }
}

impl Handshakes {
    fn new(max: usize, max_per_peer: usize) -> Arc<Self> {
        Arc::new(Self {
            pending: Mutex::default(),
            max: max.max(1),
            max_per_peer: max_per_peer.max(1),
        })
    }

    /// A place for a new handshake from `peer`, shedding the oldest one at a limit.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Ticket {
        let mut pending = crate::lock(&self.pending);
        let of_peer = pending.by_peer.get(&peer);
        let oldest = match of_peer {
            Some(ids) if ids.len() >= self.max_per_peer => ids.first().copied(),
            _ if pending.by_age.len() >= self.max => pending.by_age.keys().next().copied(),
            _ => None,
        };
        if let Some(oldest) = oldest {
            pending.remove(oldest);
            tracing::debug!(%peer, "TLS handshakes at their limit; shedding the oldest");
        }
        let id = pending.next;
        pending.next = id.wrapping_add(1);
        let (tx, shed) = oneshot::channel();
        pending.by_age.insert(id, (peer, tx));
        pending.by_peer.entry(peer).or_default().insert(id);
        Ticket {
            handshakes: self.clone(),
            id,
            shed,
        }
    }
}

/// What a peer's handshakes are counted under: its address; for IPv6 its /64, since a host
/// picks addresses within its prefix at will; an IPv4-mapped address as the IPv4 one.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & (u128::MAX << 64))),
        },
        v4 => v4,
    }
}

/// Waits for the first byte of the ClientHello, without reading it.
async fn first_byte(tcp: &TcpStream) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut byte)).await {
        Ok(Ok(0)) => Err(std::io::ErrorKind::UnexpectedEof.into()),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "nothing sent within the first-byte timeout",
        )),
    }
}

/// The gRPC port's connections, for `serve_with_incoming`: plaintext, or TLS handshakes done
/// off the accept loop, at most [`MAX_HANDSHAKES`] at once and [`MAX_HANDSHAKES_PER_PEER`]
/// from one peer.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<Certificates>>,
) -> impl tokio_stream::Stream<Item = std::io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(MAX_HANDSHAKES);
    tokio::spawn(async move {
        let acceptor = tls.map(|c| tokio_rustls::TlsAcceptor::from(c.server_config()));
        let handshakes = Handshakes::new(MAX_HANDSHAKES, MAX_HANDSHAKES_PER_PEER);
        loop {
            // The listener closes as soon as the server stops taking connections.
            let tcp = tokio::select! {
                tcp = crate::net::accept(&listener) => tcp,
                () = tx.closed() => return,
            };
            let Some(acceptor) = &acceptor else {
                if tx.send(Ok(Conn::Plain(tcp))).await.is_err() {
                    return;
                }
                continue;
            };
            // A peer gone before it was asked its address is dropped with its connection.
            let Ok(peer) = tcp.peer_addr() else {
                continue;
            };
            let mut ticket = handshakes.admit(peer_key(peer.ip()));
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let handshake = async {
                    first_byte(&tcp).await?;
                    acceptor.accept(tcp).await
                };
                let handshake = tokio::select! {
                    handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake) => handshake,
                    _ = &mut ticket.shed => {
                        tracing::debug!(%peer, "TLS handshake shed for a newer one");
                        return;
                    }
                };
                drop(ticket);
                match handshake {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(Conn::Tls(Box::new(tls)))).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shed(ticket: &mut Ticket) -> bool {
        matches!(
            ticket.shed.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        )
    }

    #[test]
    fn a_peer_at_its_limit_sheds_its_own_oldest_handshake() {
        let handshakes = Handshakes::new(8, 2);
        let (a, b) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let mut of_b = handshakes.admit(b);
        let mut of_a: Vec<_> = (0..3).map(|_| handshakes.admit(a)).collect();
        assert!(shed(&mut of_a[0]), "the oldest of the peer's three");
        assert!(!shed(&mut of_a[1]) && !shed(&mut of_a[2]));
        assert!(!shed(&mut of_b), "another peer's handshake is not touched");
        // A finished handshake gives its place back: the next one sheds nothing.
        of_a.drain(..2);
        let mut again = handshakes.admit(a);
        assert!(!shed(&mut of_a[0]) && !shed(&mut again));
    }

    #[test]
    fn the_port_at_its_limit_sheds_the_oldest_handshake() {
        let handshakes = Handshakes::new(3, 2);
        let mut tickets: Vec<_> = [1, 2, 3, 4]
            .map(|host| handshakes.admit([10, 0, 0, host].into()))
            .into();
        assert!(shed(&mut tickets[0]));
        assert!(tickets[1..].iter_mut().all(|t| !shed(t)));
        let pending = crate::lock(&handshakes.pending);
        assert_eq!((pending.by_age.len(), pending.by_peer.len()), (3, 3));
        drop(pending);
        tickets.clear();
        let pending = crate::lock(&handshakes.pending);
        assert!(pending.by_age.is_empty() && pending.by_peer.is_empty());
    }

    #[test]
    fn ipv6_peers_count_by_their_64_prefix() {
        let key = |ip: &str| peer_key(ip.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_eq!(key("127.0.0.1"), "127.0.0.1".parse::<IpAddr>().unwrap());
    }
}
