//! The API's TLS identity and client authentication: a serving certificate
//! given on the command line, or one the kubelet makes itself at first start
//! and keeps under `<root>/pki` (as upstream, a throwaway CA and a serving
//! certificate it signs, both in `kubelet.crt`, so that clients can trust that
//! file as they would a CA); and, with a client CA, which clients may pass.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// What can go wrong setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path}: no PEM {what} in it")]
    Empty { what: &'static str, path: PathBuf },
    #[error("{path}: not a PEM {what}: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("a TLS certificate file and a private key file go together: give both or neither")]
    HalfPair,
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("making the kubelet's self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("client CA {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("TLS configuration (certificate {cert} and key {key}): {source}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// Where the serving certificate comes from and who may connect.
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    /// A certificate (chain) and key given by the operator; when None, the
    /// self-signed pair under `pki_dir`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Where the self-signed pair is kept (`kubelet.crt`, `kubelet.key`).
    pub pki_dir: PathBuf,
    /// The names and addresses the self-signed certificate is valid for.
    pub hosts: Vec<String>,
    /// Clients presenting a certificate signed by this CA are authenticated.
    pub client_ca_file: Option<PathBuf>,
}

/// The self-signed certificate of `pki_dir`.
pub fn self_signed_paths(pki_dir: &Path) -> (PathBuf, PathBuf) {
    (pki_dir.join("kubelet.crt"), pki_dir.join("kubelet.key"))
}

/// The serving certificate and key files: the given ones, or the
/// self-signed pair, made now if it does not exist yet.
pub fn serving_files(s: &TlsSettings) -> Result<(PathBuf, PathBuf), TlsError> {
    match (&s.cert_file, &s.key_file) {
        (Some(c), Some(k)) => return Ok((c.clone(), k.clone())),
        (Some(_), None) | (None, Some(_)) => return Err(TlsError::HalfPair),
        (None, None) => {}
    }
    let (cert, key) = self_signed_paths(&s.pki_dir);
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let (cert_pem, key_pem) = generate_self_signed(&s.hosts)?;
    std::fs::create_dir_all(&s.pki_dir).map_err(|source| TlsError::Write {
        path: s.pki_dir.clone(),
        source,
    })?;
    write_file(&key, key_pem.as_bytes(), 0o600)?;
    write_file(&cert, cert_pem.as_bytes(), 0o644)?;
    tracing::info!(cert = %cert.display(), "made the kubelet's self-signed serving certificate");
    Ok((cert, key))
}

/// Writes through a temporary file and a rename, so a crash never leaves
/// half a key that the next start would take as valid.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// A CA named `<host>-ca@<unix time>` and a serving certificate for `hosts`
/// signed by it, as upstream's `GenerateSelfSignedCertKey`:
/// the PEM of both certificates (serving first) and of the serving key.
pub fn generate_self_signed(hosts: &[String]) -> Result<(String, String), TlsError> {
    let first = hosts.first().map_or("localhost", String::as_str);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name(&format!("{first}-ca@{now}"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.distinguished_name = name(&format!("{first}@{now}"));
    leaf.subject_alt_names = hosts
        .iter()
        .map(|h| match h.parse::<IpAddr>() {
            Ok(ip) => Ok(rcgen::SanType::IpAddress(ip)),
            Err(_) => h.clone().try_into().map(rcgen::SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    Ok((
        format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        key.serialize_pem(),
    ))
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// The certificates of a PEM file.
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|source| TlsError::Read {
        what: "private key",
        path: path.to_path_buf(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A root store of the certificates in `path`.
pub fn root_store(what: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(what, path)? {
        roots.add(c).map_err(|e| TlsError::ClientCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS configuration. With a client CA, a client certificate
/// is asked for but not required: requests without one are refused per
/// request (401), as upstream answers anonymous requests when anonymous
/// auth is off.
pub fn server_config(s: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (cert_path, key_path) = serving_files(s)?;
    let certs = read_certs("certificate", &cert_path)?;
    let key = read_key(&key_path)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config {
            cert: cert_path.clone(),
            key: key_path.clone(),
            source,
        })?;
    let builder = match &s.client_ca_file {
        Some(ca) => {
            let roots = root_store("client CA", ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Config {
            cert: cert_path,
            key: key_path,
            source,
        })?;
    // Upgrades (exec, attach, port forwarding) need HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration trusting the certificates of `ca_file` (for
/// `berth pods`/`logs`/`exec` and tests: the kubelet's own `kubelet.crt`).
pub fn client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = root_store("CA certificate", ca_file)?;
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::ClientCa {
            path: ca_file.to_path_buf(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
