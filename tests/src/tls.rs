//! TLS for the real-socket tests: a test CA and server certificates made by `openssl` at test
//! time (in a temporary directory, removed on drop), and a blocking wss client: rustls over a
//! `TcpStream`, the protocol core on top, every wait bounded.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ringside::Message;
use ringside_proto::handshake;
use ringside_proto::{Config, Connection, Event, Role};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::{read_some, Seen, WAIT};

/// A test certificate authority in a temporary directory.
#[derive(Debug)]
pub struct TestPki {
    dir: PathBuf,
    /// The CA certificate (PEM), for clients to trust.
    pub ca: PathBuf,
    serial: AtomicUsize,
}

/// A server certificate the test CA issued for `localhost` and `127.0.0.1`.
#[derive(Debug, Clone)]
pub struct ServerCert {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// The certificate in DER, to recognise it on the wire.
    pub der: Vec<u8>,
    /// Base64 of the SHA-256 of its public key (SPKI): Chromium's
    /// `--ignore-certificate-errors-spki-list`.
    pub spki_sha256: String,
}

impl TestPki {
    /// Makes a CA (EC P-256, valid two days) with `openssl`; panics, saying how to install
    /// it, when `openssl` is missing.
    pub fn new() -> TestPki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringside-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let pki = TestPki { ca: dir.join("ca.pem"), dir, serial: AtomicUsize::new(1) };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Ringside test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        pki
    }

    /// The directory the files are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Issues a server certificate named `name` (files `name.pem`, `name.key`).
    pub fn server_cert(&self, name: &str) -> ServerCert {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed).to_string();
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write the extensions file");
        let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN=localhost {name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial,
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &ext,
        ]);
        let spki = self.shell(&format!(
            "openssl x509 -in {pem} -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | openssl base64 -A"
        ));
        let cert = self.dir.join(&pem);
        let der = CertificateDer::from_pem_file(&cert).expect("openssl wrote a certificate");
        ServerCert { cert, key: self.dir.join(&key), der: der.to_vec(), spki_sha256: spki }
    }

    /// A client configuration trusting only this CA, offering ALPN `http/1.1`.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client_config_versions(rustls::DEFAULT_VERSIONS)
    }

    /// The same, limited to `versions` (`&[&rustls::version::TLS12]`: TLS 1.2 only).
    pub fn client_config_versions(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        let ca = CertificateDer::from_pem_file(&self.ca).expect("the CA certificate");
        roots.add(ca).expect("the CA is usable");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl").args(args).current_dir(&self.dir).output();
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                panic!("the TLS tests need the `openssl` command ({e}): apt-get install openssl")
            }
        };
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn shell(&self, script: &str) -> String {
        let out = Command::new("/bin/sh")
            .args(["-ec", script])
            .current_dir(&self.dir)
            .output()
            .expect("/bin/sh runs");
        assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("base64 is ASCII").trim().to_owned()
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS stream to `addr` (verified as `127.0.0.1`), the TLS handshake completed.
pub fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<StreamOwned<ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect_timeout(&addr, WAIT)?;
    tcp.set_read_timeout(Some(WAIT))?;
    tcp.set_write_timeout(Some(WAIT))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::from(addr.ip());
    let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// A blocking wss client (the counterpart of [`crate::Client`] over TLS).
#[derive(Debug)]
pub struct TlsClient {
    pub tls: StreamOwned<ClientConnection, TcpStream>,
    pub conn: Connection,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl TlsClient {
    /// Connects, completes the TLS handshake and the opening handshake.
    pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> io::Result<TlsClient> {
        let mut tls = tls_connect(addr, config)?;
        let key = handshake::generate_key();
        let mut req = Vec::new();
        handshake::write_client_request(&addr.to_string(), "/", &key, &[], &[], &mut req);
        tls.write_all(&req)?;
        let mut buf = vec![0; 64 << 10];
        let mut end = 0;
        loop {
            let n = read_some(&mut tls, &mut buf[end..])?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed in handshake"));
            }
            end += n;
            match handshake::parse_response(&buf[..end], &key, &[]) {
                Ok(Some(accepted)) => {
                    let config = Config {
                        max_frame_size: u64::MAX >> 1,
                        max_message_size: u64::MAX >> 1,
                        auto_pong: true,
                    };
                    let conn = Connection::new(Role::Client, config);
                    return Ok(TlsClient { tls, conn, buf, start: accepted.head_len, end });
                }
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }

    /// The certificate the server presented (DER).
    pub fn server_cert(&self) -> Option<Vec<u8>> {
        self.tls.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec())
    }

    /// Sends what the client connection queued.
    pub fn flush(&mut self) -> io::Result<()> {
        let out = self.conn.take_output();
        self.tls.write_all(&out)?;
        self.tls.flush()
    }

    pub fn send(&mut self, msg: Message<'_>) -> io::Result<()> {
        match msg {
            Message::Text(t) => self.conn.send_text(t),
            Message::Binary(b) => self.conn.send_binary(b),
        }
        .map_err(io::Error::other)?;
        self.flush()
    }

    /// The next thing the server sent, waiting at most [`WAIT`]. [`Seen::Eof`] only after the
    /// server's close_notify; a TCP close without it is an error.
    pub fn recv(&mut self) -> io::Result<Seen> {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.start < self.end {
                let (n, event) = self
                    .conn
                    .read(&mut self.buf[self.start..self.end])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                self.start += n;
                let seen = event.map(|ev| match ev {
                    Event::Message(Message::Text(t)) => Seen::Text(t.to_owned()),
                    Event::Message(Message::Binary(b)) => Seen::Binary(b.to_vec()),
                    Event::Ping(p) => Seen::Ping(p.to_vec()),
                    Event::Pong(p) => Seen::Pong(p.to_vec()),
                    Event::Close(c) => Seen::Close(
                        c.map(|c| c.code.0),
                        c.map_or(String::new(), |c| c.reason.to_owned()),
                    ),
                });
                if let Some(seen) = seen {
                    let _ = self.flush(); // auto pong / close reply
                    return Ok(seen);
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no frame from the server"));
            }
            self.start = 0;
            self.end = 0;
            match read_some(&mut self.tls, &mut self.buf)? {
                0 => return Ok(Seen::Eof),
                n => self.end = n,
            }
        }
    }

    /// Closes with 1000 and expects the server's close frame, then close_notify.
    pub fn close(&mut self) -> io::Result<()> {
        self.conn.close(ringside::CloseCode::NORMAL, "").map_err(io::Error::other)?;
        self.flush()?;
        loop {
            match self.recv()? {
                Seen::Close(Some(1000), _) => break,
                Seen::Close(code, reason) => {
                    return Err(io::Error::other(format!("closed with {code:?} {reason}")))
                }
                Seen::Eof => return Err(io::Error::other("close_notify before the close frame")),
                _ => {}
            }
        }
        match self.recv()? {
            Seen::Eof => Ok(()),
            other => Err(io::Error::other(format!("after the close frame: {other:?}"))),
        }
    }
}

/// Reads from `stream` until EOF (or reset), at most `limit`; the bytes read, or an error
/// when the connection is still open at the limit.
pub fn read_to_close(stream: &mut TcpStream, limit: std::time::Duration) -> io::Result<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "still open"));
        }
        stream.set_read_timeout(Some(left))?;
        match read_some(stream, &mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(got),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "still open"))
            }
            Err(e) => return Err(e),
        }
    }
}
