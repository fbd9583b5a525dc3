//! The TLS client of HTTPS probes: upstream's prober sets
//! `InsecureSkipVerify`, since a container's certificate is rarely one the
//! node could verify (self-signed, or for a name the probe does not use).
//! Only the chain and name checks are skipped: handshake signatures are
//! still verified, so the session is at least with the key the server
//! presented.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// Accepts any certificate; verifies handshake signatures.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The application protocol a probe speaks over TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// HTTPS probes: HTTP/1.1, as upstream's prober, whose custom TLS config
    /// turns HTTP/2 off.
    Http1,
    /// gRPC probes in `TLS` mode.
    H2,
}

/// The client config of probes over TLS, made once per protocol: no
/// certificate verification.
pub fn insecure_client(alpn: Alpn) -> Result<Arc<ClientConfig>, rustls::Error> {
    static HTTP1: OnceLock<Result<Arc<ClientConfig>, rustls::Error>> = OnceLock::new();
    static H2: OnceLock<Result<Arc<ClientConfig>, rustls::Error>> = OnceLock::new();
    let (cell, protocol): (_, &[u8]) = match alpn {
        Alpn::Http1 => (&HTTP1, b"http/1.1"),
        Alpn::H2 => (&H2, b"h2"),
    };
    cell.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(AnyCertificate(provider.signature_verification_algorithms));
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![protocol.to_vec()];
        Ok(Arc::new(config))
    })
    .clone()
}
