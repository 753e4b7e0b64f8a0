//! Certificates for `--https` listeners, chosen by SNI.
//!
//! Interim source: a directory (`--tls-cert-dir`) laid out as mounted `kubernetes.io/tls`
//! Secrets: one subdirectory per Secret holding `tls.crt` and `tls.key` (PEM), or `NAME.crt` +
//! `NAME.key` pairs at the top level. The names a certificate serves are its DNS subject
//! alternative names (`*.example.com` wildcards cover one label). A client without SNI, or with a
//! name no certificate covers, gets the first certificate in path order. The directory is rescanned
//! every few seconds; a changed set replaces the old one for new handshakes.
//!
//! Not yet: certificates from the Secrets that Ingress `tls` entries and Gateway listeners
//! reference (Secrets are not in the tables' model yet; see STATUS.md).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, CryptoProvider, ResolvesServerCert};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: no certificate or key found")]
    Empty(PathBuf),
    #[error("{0}: {1}")]
    Key(PathBuf, String),
    #[error("{0}: no certificate pair (DIR/NAME/tls.crt + tls.key, or NAME.crt + NAME.key)")]
    NoPairs(PathBuf),
}

/// The certificates of one scan.
#[derive(Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// Every name served, for the log.
    pub names: Vec<String>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("names", &self.names)
            .finish()
    }
}

impl CertStore {
    fn lookup(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(c) = self.exact.get(&name) {
                return Some(c.clone());
            }
            if let Some((_, parent)) = name.split_once('.') {
                if let Some(c) = self.wildcard.get(parent) {
                    return Some(c.clone());
                }
            }
        }
        self.default.clone()
    }

    /// Loads every pair under `dir`.
    pub fn load_dir(dir: &Path) -> Result<CertStore, TlsError> {
        let pairs = find_pairs(dir)?;
        if pairs.is_empty() {
            return Err(TlsError::NoPairs(dir.to_path_buf()));
        }
        let mut store = CertStore::default();
        for (crt, key) in pairs {
            let (certified, names) = load_pair(&crt, &key)?;
            let certified = Arc::new(certified);
            store.default.get_or_insert_with(|| certified.clone());
            for n in names {
                let n = n.to_ascii_lowercase();
                if let Some(suffix) = n.strip_prefix("*.") {
                    store
                        .wildcard
                        .entry(suffix.to_string())
                        .or_insert_with(|| certified.clone());
                } else {
                    store
                        .exact
                        .entry(n.clone())
                        .or_insert_with(|| certified.clone());
                }
                store.names.push(n);
            }
        }
        store.names.sort();
        store.names.dedup();
        Ok(store)
    }
}

/// `(cert, key)` paths, in path order.
fn find_pairs(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>, TlsError> {
    let io = |e| TlsError::Io(dir.to_path_buf(), e);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    entries.sort();
    let mut pairs = Vec::new();
    for p in entries {
        if p.is_dir() {
            let (c, k) = (p.join("tls.crt"), p.join("tls.key"));
            if c.is_file() && k.is_file() {
                pairs.push((c, k));
            }
        } else if p.extension().is_some_and(|e| e == "crt") {
            let k = p.with_extension("key");
            if k.is_file() {
                pairs.push((p, k));
            }
        }
    }
    Ok(pairs)
}

fn load_pair(crt: &Path, key: &Path) -> Result<(CertifiedKey, Vec<String>), TlsError> {
    let (crt_s, key_s) = (crt.display().to_string(), key.display().to_string());
    let (certs, key_der) = pingora::tls::load_certs_and_key_files(&crt_s, &key_s)
        .map_err(|e| TlsError::Key(crt.to_path_buf(), e.to_string()))?
        .ok_or_else(|| TlsError::Empty(crt.to_path_buf()))?;
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default().expect("a rustls crypto provider is installed");
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::Key(key.to_path_buf(), e.to_string()))?;
    let names = certs
        .first()
        .map(|c| san_dns_names(c.as_ref()))
        .unwrap_or_default();
    Ok((CertifiedKey::new(certs, signing), names))
}

/// The DNS names of a certificate's subjectAltName (the subject CN when there is none).
fn san_dns_names(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return vec![];
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert.subject().iter_common_name().next() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_string());
            }
        }
    }
    names
}

/// The rustls resolver over the current store.
#[derive(Debug)]
pub struct SniResolver {
    pub store: ArcSwap<CertStore>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store.load().lookup(hello.server_name())
    }
}

/// A fingerprint of the directory's pairs (paths, sizes, mtimes), to notice changes cheaply.
pub fn dir_fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    if let Ok(pairs) = find_pairs(dir) {
        for (c, k) in pairs {
            for p in [c, k] {
                let md = std::fs::metadata(&p).ok();
                out.push((
                    p,
                    md.as_ref().map(|m| m.len()).unwrap_or(0),
                    md.and_then(|m| m.modified().ok()),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, sub: &str, names: &[&str]) {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("tls.crt"), ck.cert.pem()).unwrap();
        std::fs::write(d.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    }

    #[test]
    fn sni_exact_wildcard_and_default() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "a", &["a.test"]);
        write_pair(dir.path(), "b", &["*.b.test", "b.test"]);
        let store = CertStore::load_dir(dir.path()).unwrap();
        assert_eq!(store.names, ["*.b.test", "a.test", "b.test"]);
        let a = store.lookup(Some("a.test")).unwrap();
        let b = store.lookup(Some("x.b.test")).unwrap();
        assert!(!Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&b, &store.lookup(Some("B.TEST.")).unwrap()));
        // One label only for wildcards; unknown names and no SNI get the first pair (a).
        assert!(Arc::ptr_eq(&a, &store.lookup(Some("y.x.b.test")).unwrap()));
        assert!(Arc::ptr_eq(&a, &store.lookup(None).unwrap()));
        assert_eq!(dir_fingerprint(dir.path()).len(), 4);
    }

    #[test]
    fn empty_or_broken_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            CertStore::load_dir(dir.path()),
            Err(TlsError::NoPairs(_))
        ));
        std::fs::write(dir.path().join("x.crt"), "not pem").unwrap();
        std::fs::write(dir.path().join("x.key"), "not pem").unwrap();
        assert!(CertStore::load_dir(dir.path()).is_err());
    }
}
