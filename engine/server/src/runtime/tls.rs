//! TLS (wss) between the backends and the worker, with rustls.
//!
//! The backends move ciphertext; the worker speaks plaintext. In between, per TLS connection, a
//! rustls session and a second [`SendQueue`] holding ciphertext:
//!
//! - **In:** the backend's bytes go through the session (`read_tls`, `process_new_packets`) and
//!   the decrypted bytes of the whole read, collected in one per-worker buffer, go on to the
//!   handshake or frame path exactly as a plain connection's bytes would.
//! - **Out:** handlers, the handshake and the protocol queue plaintext in the connection's
//!   ordinary send queue, as for plain ws. Once per loop iteration the worker seals what is
//!   pending there into records ([`TlsConn::seal`]), appended to the ciphertext queue, which
//!   is what the backend flushes and reports completions into (`Driver::queue`). Everything
//!   queued in an iteration leaves as one batch of records in one send: corked as plain ws.
//!   The worker seals only while the ciphertext queue is empty (or the connection is
//!   closing), so a backlog stays plaintext in the ordinary queue, where the send limit, the
//!   slow-consumer policy and conflation see it.
//!
//! The session state lives in a box per TLS connection, in a table indexed by connection id
//! that a plain server never fills: the size of a connection's slab entry does not change,
//! and the state lives exactly as long as the id (until the backend releases it), so the
//! alert, the last records and the ciphertext the kernel may still hold outlive the protocol
//! state. Kernel TLS would replace the session after the handshake (the secrets go to the
//! socket, the ciphertext queue stays empty); it is not built: the kernel here has no `tls`
//! module.
//!
//! Certificates are reloadable: workers read the shared [`TlsShared`] at each accept (an
//! atomic generation compared, the lock taken only after a reload), so new connections get the
//! new certificate and existing ones keep their session.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, ServerConnection};

use super::queue::{Pool, SendQueue};
use crate::config::TlsIdentity;

/// A PEM file larger than this is not a certificate chain or a key: refuse it rather than read
/// it into memory.
const MAX_PEM_BYTES: u64 = 1 << 20;
/// The per-worker buffer of decrypted bytes is freed when a read made it larger than this.
const PLAIN_KEEP: usize = 256 << 10;

/// The TLS configuration the workers share; a reload replaces it for new connections.
pub(crate) struct TlsShared {
    /// Bumped by every reload; workers compare it at each accept.
    generation: AtomicU64,
    current: Mutex<(TlsIdentity, Arc<ServerConfig>)>,
}

impl std::fmt::Debug for TlsShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsShared").field("generation", &self.generation).finish()
    }
}

impl TlsShared {
    /// Loads `identity`; the error says what is wrong with it.
    pub(crate) fn new(identity: TlsIdentity) -> Result<Self, String> {
        let config = server_config(&identity)?;
        Ok(TlsShared { generation: AtomicU64::new(0), current: Mutex::new((identity, config)) })
    }

    /// Loads the configured identity again (files are read anew) and serves it to new
    /// connections. On failure the previous certificate stays.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let identity = self.lock().0.clone();
        self.replace(identity)
    }

    /// Serves `identity` to new connections from now on.
    pub(crate) fn replace(&self, identity: TlsIdentity) -> Result<(), String> {
        let config = server_config(&identity)?;
        let mut current = self.lock();
        *current = (identity, config);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (TlsIdentity, Arc<ServerConfig>)> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn config(&self) -> (u64, Arc<ServerConfig>) {
        let current = self.lock();
        (self.generation.load(Ordering::Acquire), Arc::clone(&current.1))
    }
}

/// Reads `path`, at most [`MAX_PEM_BYTES`].
fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot open the {what} file {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the {what} file {}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!("the {what} file {} is over 1 MiB: not PEM", path.display()));
    }
    Ok(bytes)
}

/// A rustls server configuration for `identity`: TLS 1.3 and 1.2 with rustls's default
/// cipher suites (ring), no client certificates, ALPN `http/1.1`.
pub(crate) fn server_config(identity: &TlsIdentity) -> Result<Arc<ServerConfig>, String> {
    let (cert_pem, key_pem, source) = match identity {
        TlsIdentity::Files { cert, key } => (
            read_pem(cert, "certificate")?,
            read_pem(key, "key")?,
            format!("{} and {}", cert.display(), key.display()),
        ),
        TlsIdentity::Pem { cert, key } => (cert.clone(), key.clone(), "the PEM given".into()),
    };
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate PEM in {source}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no CERTIFICATE block in {source}"));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("no usable PRIVATE KEY block in {source}: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key from {source} do not work together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One TLS connection: the session and the ciphertext on its way out.
pub(crate) struct TlsConn {
    session: ServerConnection,
    /// Ciphertext for the backend: what `Driver::queue` returns for this connection.
    pub out: SendQueue,
    /// The session failed (an alert may be queued): nothing more is read or sealed.
    failed: bool,
    /// Our close_notify is queued.
    notified: bool,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("handshaking", &self.session.is_handshaking())
            .field("out", &self.out.len())
            .field("failed", &self.failed)
            .finish()
    }
}

/// Appends what rustls writes to a send queue.
struct QueueWriter<'a> {
    queue: &'a mut SendQueue,
    pool: &'a mut Pool,
}

impl Write for QueueWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.queue.push(self.pool, buf);
        Ok(buf.len())
    }

    // rustls hands its records over as one vectored write per `write_tls`: take them all.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut n = 0;
        for buf in bufs {
            self.queue.push(self.pool, buf);
            n += buf.len();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsConn {
    /// Decrypts `data` (ciphertext from the socket), appending the plaintext to `plain`;
    /// handshake records the session answers with go to the ciphertext queue. An error is
    /// fatal: an alert may be queued, send it and close.
    pub(crate) fn decrypt(
        &mut self,
        data: &[u8],
        plain: &mut Vec<u8>,
        pool: &mut Pool,
    ) -> Result<(), String> {
        if self.failed {
            return Ok(());
        }
        let mut input = data;
        while !input.is_empty() {
            // The session takes at most a few KiB per call; each call is followed by
            // processing and draining, so its buffers never fill.
            let read = self.session.read_tls(&mut input);
            let state = match read.map_err(|e| e.to_string()).and_then(|n| {
                let state = self.session.process_new_packets().map_err(|e| e.to_string())?;
                Ok((n, state))
            }) {
                Ok(state) => state,
                Err(e) => {
                    self.failed = true;
                    self.write_records(pool);
                    return Err(e);
                }
            };
            let (n, state) = state;
            let ready = state.plaintext_bytes_to_read();
            if ready > 0 {
                let start = plain.len();
                plain.resize(start + ready, 0);
                if let Err(e) = self.session.reader().read_exact(&mut plain[start..]) {
                    self.failed = true;
                    return Err(e.to_string());
                }
            }
            if state.peer_has_closed() || n == 0 {
                // close_notify: nothing after it counts (the session reads no more).
                break;
            }
        }
        self.write_records(pool);
        Ok(())
    }

    /// Moves the records the session has ready (handshake, alerts, sealed data) into the
    /// ciphertext queue; `true` when there were any.
    fn write_records(&mut self, pool: &mut Pool) -> bool {
        let mut wrote = false;
        while self.session.wants_write() {
            let mut w = QueueWriter { queue: &mut self.out, pool };
            match self.session.write_tls(&mut w) {
                Ok(0) | Err(_) => break,
                Ok(_) => wrote = true,
            }
        }
        wrote
    }

    /// Encrypts what `plain` holds pending into the ciphertext queue: corked, each pending
    /// piece (the owned buffer holding every small frame of the iteration, a shared frame)
    /// becomes as few records as its size allows. `true` when records were queued.
    pub(crate) fn seal(&mut self, plain: &mut SendQueue, pool: &mut Pool) -> bool {
        if self.failed || self.notified {
            plain.take_pending(|_| {});
            return false;
        }
        let mut wrote = false;
        let session = &mut self.session;
        let out = &mut self.out;
        plain.take_pending(|mut piece| {
            // The session's own buffer takes up to its limit (64 KiB); drain it into the
            // ciphertext queue as it fills, so a large message is not held twice.
            while !piece.is_empty() {
                match session.writer().write(piece) {
                    Ok(n) if n > 0 => piece = &piece[n..],
                    _ if session.wants_write() => {}
                    // Nothing taken and nothing to drain: the session is closed for writing.
                    _ => return,
                }
                while session.wants_write() {
                    match session.write_tls(&mut QueueWriter { queue: out, pool }) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => wrote = true,
                    }
                }
            }
        });
        self.write_records(pool) || wrote
    }

    /// Queues our close_notify (once; not after a failure).
    pub(crate) fn close_notify(&mut self, pool: &mut Pool) {
        if !self.failed && !self.notified {
            self.notified = true;
            self.session.send_close_notify();
            self.write_records(pool);
        }
    }
}

/// A worker's TLS side: the configuration it serves new connections, and the sessions.
#[derive(Debug)]
pub(crate) struct Layer {
    shared: Arc<TlsShared>,
    generation: u64,
    config: Arc<ServerConfig>,
    /// Indexed by connection id; only TLS servers have a layer at all.
    #[allow(clippy::vec_box)] // boxed: a slot is one pointer, the session is large
    conns: Vec<Option<Box<TlsConn>>>,
    /// Plaintext of the read being handled (taken out while it is handled).
    pub plain: Vec<u8>,
}

impl Layer {
    pub(crate) fn new(shared: Arc<TlsShared>) -> Self {
        let (generation, config) = shared.config();
        Layer { shared, generation, config, conns: Vec::new(), plain: Vec::new() }
    }

    /// Starts a session for a new connection `id`, with the latest certificate.
    pub(crate) fn accept(&mut self, id: usize) -> Result<(), String> {
        if self.shared.generation.load(Ordering::Acquire) != self.generation {
            (self.generation, self.config) = self.shared.config();
        }
        let session = ServerConnection::new(Arc::clone(&self.config)).map_err(|e| e.to_string())?;
        if self.conns.len() <= id {
            self.conns.resize_with(id + 1, || None);
        }
        self.conns[id] = Some(Box::new(TlsConn {
            session,
            out: SendQueue::default(),
            failed: false,
            notified: false,
        }));
        Ok(())
    }

    pub(crate) fn conn(&mut self, id: usize) -> Option<&mut TlsConn> {
        self.conns.get_mut(id).and_then(|c| c.as_deref_mut())
    }

    /// Drops `id`'s session (the backend released the id: nothing of it is in flight).
    pub(crate) fn release(&mut self, id: usize, pool: &mut Pool) {
        if let Some(mut conn) = self.conns.get_mut(id).and_then(Option::take) {
            conn.out.discard();
            conn.out.recycle(pool);
        }
    }

    /// Gives the plaintext buffer back after a read was handled.
    pub(crate) fn put_plain(&mut self, mut plain: Vec<u8>) {
        plain.clear();
        if plain.capacity() <= PLAIN_KEEP {
            self.plain = plain;
        }
    }
}
