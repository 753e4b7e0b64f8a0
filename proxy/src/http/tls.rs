//! Certificates for `--https` listeners, chosen by SNI.
//!
//! Two sources, consulted in this order for each handshake:
//!
//! 1. The snapshot's `routes.tls` (`tables::TlsTable`): the `kubernetes.io/tls` Secrets that our
//!    Ingresses' `tls` entries and our Gateways' HTTPS listeners reference, each serving the
//!    names of its entry. The rustls certified keys are rebuilt only when the `Arc<TlsTable>`
//!    changes (checked on each handshake and by the rescan task); parsed Secrets are cached by
//!    their PEM buffers, so one that fails to parse is logged once and skipped.
//! 2. Fallback: a directory (`--tls-cert-dir`) laid out as mounted `kubernetes.io/tls` Secrets:
//!    one subdirectory per Secret holding `tls.crt` and `tls.key` (PEM), or `NAME.crt` +
//!    `NAME.key` pairs at the top level. The names a certificate serves are its DNS subject
//!    alternative names. The directory is rescanned every few seconds; a changed set replaces
//!    the old one for new handshakes.
//!
//! SNI matching: an exact name (Secrets, then the directory), then the most specific `*.`
//! wildcard (covering one or more labels, the tables' convention: `*.example.com` covers
//! `a.example.com` and `a.b.example.com`, not `example.com`; Secrets, then the directory),
//! then the default certificate: a Secret entry without host names, else the first Secret
//! certificate, else the directory's first certificate in path order.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{
    CertificateDer, ClientHello, CryptoProvider, PrivateKeyDer, ResolvesServerCert,
};
use tables::snapshot::TlsTable;
use tables::SnapshotCell;

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
    /// Exact name, then the most specific `*.` wildcard (one or more labels). `name` is
    /// lower-case without a trailing dot.
    fn matching(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        if let Some(c) = self.exact.get(name) {
            return Some(c.clone());
        }
        let mut rest = name;
        while let Some((_, parent)) = rest.split_once('.') {
            if let Some(c) = self.wildcard.get(parent) {
                return Some(c.clone());
            }
            rest = parent;
        }
        None
    }

    #[cfg(test)]
    fn lookup(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        name.and_then(|n| self.matching(&tables::snapshot::normalize_name(n)))
            .or_else(|| self.default.clone())
    }

    /// Adds `names` for `certified`; names already present keep their earlier certificate.
    fn insert(&mut self, names: &[String], certified: &Arc<CertifiedKey>) {
        for n in names {
            let n = n.to_ascii_lowercase();
            if let Some(suffix) = n.strip_prefix("*.") {
                self.wildcard
                    .entry(suffix.to_string())
                    .or_insert_with(|| certified.clone());
            } else {
                self.exact
                    .entry(n.clone())
                    .or_insert_with(|| certified.clone());
            }
            self.names.push(n);
        }
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
            store.insert(&names, &certified);
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
    let names = certs
        .first()
        .map(|c| san_dns_names(c.as_ref()))
        .unwrap_or_default();
    let certified =
        certified_key(certs, key_der).map_err(|e| TlsError::Key(key.to_path_buf(), e))?;
    Ok((certified, names))
}

fn certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default().expect("a rustls crypto provider is installed");
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(certs, signing))
}

/// A certificate chain and private key from PEM buffers (a Secret's `tls.crt` and `tls.key`).
pub fn parse_pem_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    use x509_parser::pem::Pem;
    let mut certs = Vec::new();
    for block in Pem::iter_from_buffer(cert_pem) {
        let block = block.map_err(|e| format!("tls.crt: {e}"))?;
        if block.label == "CERTIFICATE" {
            certs.push(CertificateDer::from(block.contents));
        }
    }
    if certs.is_empty() {
        return Err("tls.crt: no PEM certificate".into());
    }
    let mut key = None;
    for block in Pem::iter_from_buffer(key_pem) {
        let block = block.map_err(|e| format!("tls.key: {e}"))?;
        key = match block.label.as_str() {
            "PRIVATE KEY" => Some(PrivateKeyDer::Pkcs8(block.contents.into())),
            "RSA PRIVATE KEY" => Some(PrivateKeyDer::Pkcs1(block.contents.into())),
            "EC PRIVATE KEY" => Some(PrivateKeyDer::Sec1(block.contents.into())),
            _ => continue,
        };
        break;
    }
    let key = key.ok_or("tls.key: no PEM private key")?;
    let certified = certified_key(certs, key).map_err(|e| format!("tls.key: {e}"))?;
    certified
        .keys_match()
        .map_err(|e| format!("tls.key does not match tls.crt: {e}"))?;
    Ok(certified)
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

/// The certificates of one `TlsTable`.
struct FromSecrets {
    table: Arc<TlsTable>,
    store: CertStore,
}

/// Parsed Secrets by the addresses of their PEM buffers (kept alive here, so an address is not
/// reused while its entry exists); `None` for one that failed to parse (and was logged).
type ParseCache = HashMap<(usize, usize), (Arc<[u8]>, Arc<[u8]>, Option<Arc<CertifiedKey>>)>;

impl FromSecrets {
    fn build(table: Arc<TlsTable>, cache: &mut ParseCache) -> FromSecrets {
        let mut store = CertStore::default();
        let mut first = None;
        let mut next_cache = ParseCache::new();
        for cert in &table.certs {
            let key = (
                cert.cert_pem.as_ptr() as usize,
                cert.key_pem.as_ptr() as usize,
            );
            let entry = match cache.remove(&key).or_else(|| next_cache.remove(&key)) {
                Some(e) => e,
                None => {
                    let parsed = match parse_pem_pair(&cert.cert_pem, &cert.key_pem) {
                        Ok(c) => Some(Arc::new(c)),
                        Err(error) => {
                            tracing::warn!(
                                secret = %format!("{}/{}", cert.secret.namespace, cert.secret.name),
                                referenced_by = %format!(
                                    "{:?} {}/{}",
                                    cert.referenced_by.kind,
                                    cert.referenced_by.namespace,
                                    cert.referenced_by.name
                                ),
                                %error,
                                "TLS Secret skipped: its certificate or key does not parse"
                            );
                            None
                        }
                    };
                    (cert.cert_pem.clone(), cert.key_pem.clone(), parsed)
                }
            };
            if let Some(certified) = &entry.2 {
                first.get_or_insert_with(|| certified.clone());
                if cert.hostnames.is_empty() {
                    store.default.get_or_insert_with(|| certified.clone());
                } else {
                    let names: Vec<String> = cert.hostnames.iter().map(|h| h.to_string()).collect();
                    store.insert(&names, certified);
                }
            }
            next_cache.insert(key, entry);
        }
        *cache = next_cache;
        if store.default.is_none() {
            store.default = first;
        }
        store.names.sort();
        store.names.dedup();
        FromSecrets { table, store }
    }
}

/// The rustls resolver: certificates from the snapshot's Secrets, then from `--tls-cert-dir`.
pub struct SniResolver {
    /// Where `routes.tls` comes from; `None` serves the directory only.
    cell: Option<SnapshotCell>,
    /// The directory's certificates (empty without `--tls-cert-dir`).
    pub dir: ArcSwap<CertStore>,
    secrets: ArcSwap<FromSecrets>,
    cache: Mutex<ParseCache>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("secrets", &self.secrets.load().store)
            .field("dir", &self.dir.load())
            .finish()
    }
}

impl SniResolver {
    pub fn new(cell: Option<SnapshotCell>, dir: CertStore) -> SniResolver {
        SniResolver {
            cell,
            dir: ArcSwap::from_pointee(dir),
            secrets: ArcSwap::from_pointee(FromSecrets {
                table: Arc::new(TlsTable::default()),
                store: CertStore::default(),
            }),
            cache: Mutex::new(ParseCache::new()),
        }
    }

    /// The certificates of the current snapshot's `routes.tls`, rebuilt if it changed.
    fn secrets(&self) -> Arc<FromSecrets> {
        let current = self.secrets.load_full();
        let Some(cell) = &self.cell else {
            return current;
        };
        let table = cell.load().routes.tls.clone();
        if Arc::ptr_eq(&current.table, &table) {
            return current;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // Another handshake may have rebuilt it while this one waited.
        let current = self.secrets.load_full();
        if Arc::ptr_eq(&current.table, &table) {
            return current;
        }
        let built = Arc::new(FromSecrets::build(table, &mut cache));
        if built.store.names != current.store.names
            || built.store.default.is_some() != current.store.default.is_some()
        {
            tracing::info!(
                names = ?built.store.names,
                default = built.store.default.is_some(),
                "TLS certificates from Secrets"
            );
        }
        self.secrets.store(built.clone());
        built
    }

    /// Rebuilds the Secrets' certificates now if the snapshot's `routes.tls` changed (so
    /// handshakes seldom pay for it).
    pub fn refresh(&self) {
        self.secrets();
    }

    /// The certificate for an SNI name (or for no SNI).
    pub fn lookup(&self, name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let secrets = self.secrets();
        let dir = self.dir.load();
        if let Some(name) = name {
            let name = tables::snapshot::normalize_name(name);
            if let Some(c) = secrets
                .store
                .matching(&name)
                .or_else(|| dir.matching(&name))
            {
                return Some(c);
            }
        }
        secrets
            .store
            .default
            .clone()
            .or_else(|| dir.default.clone())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(hello.server_name())
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
        // Wildcards cover one or more labels, not the bare suffix; unknown names and no SNI get
        // the first pair (a).
        assert!(Arc::ptr_eq(&b, &store.lookup(Some("y.x.b.test")).unwrap()));
        assert!(Arc::ptr_eq(&a, &store.lookup(Some("c.test")).unwrap()));
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

    fn tls_cert(secret: &str, hostnames: &[&str], names: &[&str]) -> tables::TlsCert {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        tables::TlsCert {
            hostnames: hostnames.iter().map(|h| Arc::from(*h)).collect(),
            secret: tables::ObjectKey::new(tables::Kind::Secret, "default", secret),
            referenced_by: tables::ObjectKey::new(tables::Kind::Ingress, "default", "ing"),
            cert_pem: Arc::from(ck.cert.pem().into_bytes()),
            key_pem: Arc::from(ck.signing_key.serialize_pem().into_bytes()),
        }
    }

    fn publish(cell: &SnapshotCell, certs: Vec<tables::TlsCert>) {
        let mut snap = (**cell.load()).clone();
        snap.routes.tls = Arc::new(TlsTable {
            certs,
            missing: vec![],
        });
        cell.store(Arc::new(snap));
    }

    #[test]
    fn secrets_first_then_directory_and_rebuilt_on_change_only() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "d", &["dir.test", "a.test"]);
        let cell = tables::new_cell("cluster.local");
        let resolver =
            SniResolver::new(Some(cell.clone()), CertStore::load_dir(dir.path()).unwrap());
        // Nothing from Secrets yet: the directory serves everything.
        let d = resolver.lookup(Some("dir.test")).unwrap();
        assert!(Arc::ptr_eq(&d, &resolver.lookup(Some("a.test")).unwrap()));
        assert!(Arc::ptr_eq(&d, &resolver.lookup(None).unwrap()));

        let broken = tables::TlsCert {
            cert_pem: Arc::from(&b"-----BEGIN CERTIFICATE-----\nnot base64\n"[..]),
            ..tls_cert("broken", &["broken.test"], &["broken.test"])
        };
        publish(
            &cell,
            vec![
                broken,
                tls_cert("a", &["a.test"], &["a.test"]),
                tls_cert("w", &["*.w.test"], &["*.w.test"]),
                tls_cert("default", &[], &["default.test"]),
            ],
        );
        let a = resolver.lookup(Some("A.test.")).unwrap();
        assert!(
            !Arc::ptr_eq(&a, &d),
            "the Secret's name wins over the directory's"
        );
        assert!(Arc::ptr_eq(&d, &resolver.lookup(Some("dir.test")).unwrap()));
        let w = resolver.lookup(Some("x.y.w.test")).unwrap();
        assert!(Arc::ptr_eq(&w, &resolver.lookup(Some("x.w.test")).unwrap()));
        let default = resolver.lookup(Some("w.test")).unwrap();
        assert!(!Arc::ptr_eq(&default, &w) && !Arc::ptr_eq(&default, &d));
        assert!(Arc::ptr_eq(&default, &resolver.lookup(None).unwrap()));
        // The broken Secret is skipped: its name falls to the default.
        assert!(Arc::ptr_eq(
            &default,
            &resolver.lookup(Some("broken.test")).unwrap()
        ));

        // Same table: nothing rebuilt. A new table with the same Secrets reuses the parsed keys.
        let before = resolver.secrets.load_full();
        resolver.refresh();
        assert!(Arc::ptr_eq(&before, &resolver.secrets.load_full()));
        publish(&cell, cell.load().routes.tls.certs.clone());
        assert!(Arc::ptr_eq(&a, &resolver.lookup(Some("a.test")).unwrap()));
        assert!(!Arc::ptr_eq(&before, &resolver.secrets.load_full()));

        // Without a default entry, the first parsed Secret certificate is the default.
        publish(&cell, vec![tls_cert("a2", &["a.test"], &["a.test"])]);
        let a2 = resolver.lookup(Some("a.test")).unwrap();
        assert!(!Arc::ptr_eq(&a2, &a));
        assert!(Arc::ptr_eq(
            &a2,
            &resolver.lookup(Some("nothing.test")).unwrap()
        ));
    }

    #[test]
    fn pem_pair_errors() {
        let ck = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["b.test".to_string()]).unwrap();
        let (crt, key) = (ck.cert.pem(), ck.signing_key.serialize_pem());
        assert!(parse_pem_pair(crt.as_bytes(), key.as_bytes()).is_ok());
        assert!(parse_pem_pair(b"", key.as_bytes()).is_err());
        assert!(parse_pem_pair(crt.as_bytes(), b"junk").is_err());
        let mismatched = other.signing_key.serialize_pem();
        assert!(parse_pem_pair(crt.as_bytes(), mismatched.as_bytes()).is_err());
    }
}
