//! `tls_server_config` as a rustls server configuration: certificate chain
//! and key (files or inline PEM), protocol versions, cipher suites and key
//! exchange groups restricted as configured, and a client certificate
//! verifier for each of the toolkit's `client_auth_type` values.
//!
//! Reads: the PEM files named in the config (read again at every build, so
//! a rebuild picks up renewed certificates). Emits: an
//! `Arc<rustls::ServerConfig>`. Fails: with a message starting with the key
//! (`tls_server_config.key_file: no private key in /etc/...`); no key
//! material is ever part of a message.
//!
//! Mapping notes: as in Go, `cipher_suites` restricts the TLS 1.2 suites;
//! the TLS 1.3 suites are restricted only when the list names some of them.
//! `CurveP521` has no rustls implementation and is an error. `RequestClientCert`
//! and `RequireAnyClientCert` accept any client certificate whose handshake
//! signature is valid, without checking its chain (as Go does);
//! `VerifyClientCertIfGiven` and `RequireAndVerifyClientCert` check it
//! against `client_ca_file` (required: client certificates are never
//! checked against the system's roots).

use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, aws_lc_rs};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::config::{CipherSuite, ClientAuth, Curve, Pem, TlsSettings, TlsVersion};

const KEY: &str = "tls_server_config";

fn read(pem: &Pem, key: &str) -> Result<Vec<u8>, String> {
    match pem {
        Pem::File(p) => {
            std::fs::read(p).map_err(|e| format!("{KEY}.{key}: cannot read {}: {e}", p.display()))
        }
        Pem::Inline(s) => Ok(s.as_bytes().to_vec()),
    }
}

fn where_(pem: &Pem) -> String {
    match pem {
        Pem::File(p) => p.display().to_string(),
        Pem::Inline(_) => "the inline value".to_owned(),
    }
}

fn certs(pem: &Pem, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(pem, key)?;
    let list: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    let list = list.map_err(|e| format!("{KEY}.{key}: bad PEM in {}: {e}", where_(pem)))?;
    if list.is_empty() {
        return Err(format!("{KEY}.{key}: no certificate in {}", where_(pem)));
    }
    Ok(list)
}

fn suite_id(s: CipherSuite) -> rustls::CipherSuite {
    use rustls::CipherSuite as R;
    match s {
        CipherSuite::EcdheEcdsaAes128GcmSha256 => R::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::EcdheEcdsaAes256GcmSha384 => R::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::EcdheEcdsaChacha20Poly1305Sha256 => {
            R::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        CipherSuite::EcdheRsaAes128GcmSha256 => R::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::EcdheRsaAes256GcmSha384 => R::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::EcdheRsaChacha20Poly1305Sha256 => {
            R::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        CipherSuite::Tls13Aes128GcmSha256 => R::TLS13_AES_128_GCM_SHA256,
        CipherSuite::Tls13Aes256GcmSha384 => R::TLS13_AES_256_GCM_SHA384,
        CipherSuite::Tls13Chacha20Poly1305Sha256 => R::TLS13_CHACHA20_POLY1305_SHA256,
    }
}

fn is_tls13(s: CipherSuite) -> bool {
    matches!(
        s,
        CipherSuite::Tls13Aes128GcmSha256
            | CipherSuite::Tls13Aes256GcmSha384
            | CipherSuite::Tls13Chacha20Poly1305Sha256
    )
}

fn provider(t: &TlsSettings) -> Result<CryptoProvider, String> {
    let mut p = aws_lc_rs::default_provider();
    if !t.cipher_suites.is_empty() {
        let names_13 = t.cipher_suites.iter().any(|s| is_tls13(*s));
        let wanted: Vec<rustls::CipherSuite> =
            t.cipher_suites.iter().map(|s| suite_id(*s)).collect();
        p.cipher_suites.retain(|s| match s {
            rustls::SupportedCipherSuite::Tls13(_) if !names_13 => true,
            other => wanted.contains(&other.suite()),
        });
        // Go's order is the server's preference: keep the configured order.
        p.cipher_suites.sort_by_key(|s| {
            wanted
                .iter()
                .position(|w| *w == s.suite())
                .unwrap_or(usize::MAX)
        });
    }
    if !t.curves.is_empty() {
        let mut groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup> = Vec::new();
        for (i, c) in t.curves.iter().enumerate() {
            groups.push(match c {
                Curve::X25519 => aws_lc_rs::kx_group::X25519,
                Curve::P256 => aws_lc_rs::kx_group::SECP256R1,
                Curve::P384 => aws_lc_rs::kx_group::SECP384R1,
                Curve::P521 => {
                    return Err(format!(
                        "{KEY}.curve_preferences[{i}]: CurveP521 is not supported by vmscope's TLS library (rustls); use CurveP384, CurveP256 or X25519"
                    ));
                }
            });
        }
        p.kx_groups = groups;
    }
    Ok(p)
}

/// Any client certificate with a valid handshake signature, its chain
/// unchecked: Go's `RequestClientCert` and `RequireAnyClientCert`.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Builds the rustls configuration, reading the PEM files now.
pub fn server_config(t: &TlsSettings) -> Result<Arc<ServerConfig>, String> {
    if !t.client_allowed_sans.is_empty() {
        return Err(format!(
            "{KEY}.client_allowed_sans: not supported by this version of vmscope"
        ));
    }
    let chain = certs(&t.cert, "cert_file")?;
    let key_bytes = read(&t.key, "key_file")?;
    // The error of a bad key is not shown: it could quote key material.
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|_| format!("{KEY}.key_file: no private key in {}", where_(&t.key)))?;
    let provider = Arc::new(provider(t)?);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(v, _)| (t.min_version..=t.max_version).contains(v))
    .map(|(_, r)| r)
    .collect();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| {
            format!("{KEY}: the versions, suites and curves leave nothing to negotiate: {e}")
        })?;
    let algs = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ClientCertVerifier> = match t.client_auth {
        ClientAuth::NoClientCert => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => {
            Arc::new(AnyClientCert {
                mandatory: t.client_auth == ClientAuth::RequireAnyClientCert,
                algs,
            })
        }
        ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert => {
            let ca = t.client_ca.as_ref().ok_or_else(|| {
                format!("{KEY}.client_ca_file: client_auth_type {:?} verifies client certificates against it (vmscope never uses the system's roots for clients)", t.client_auth)
            })?;
            let mut roots = RootCertStore::empty();
            for c in certs(ca, "client_ca_file")? {
                roots
                    .add(c)
                    .map_err(|e| format!("{KEY}.client_ca_file: {}: {e}", where_(ca)))?;
            }
            let b =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            let b = if t.client_auth == ClientAuth::VerifyClientCertIfGiven {
                b.allow_unauthenticated()
            } else {
                b
            };
            b.build()
                .map_err(|e| format!("{KEY}.client_ca_file: {e}"))?
        }
    };
    let mut cfg = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("{KEY}.cert_file: the certificate and key do not go together: {e}"))?;
    // HTTP/1.1 only (http_server_config.http2 is accepted but not served).
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The TLS configuration in force, replaceable while connections run (a
/// reload affects new handshakes only).
#[derive(Debug)]
pub struct TlsState {
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsState {
    pub fn new(cfg: Arc<ServerConfig>) -> TlsState {
        TlsState {
            current: RwLock::new(cfg),
        }
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn replace(&self, cfg: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    }
}
