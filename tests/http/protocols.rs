//! Protocols: h2c, TLS by SNI (from a directory and from Secrets), h2c backends, WebSocket.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_and_tls_with_two_sni_names() {
    let a = Backend::start("site-a").await;
    let b = Backend::start("site-b").await;
    // Two certificates, each trusted on its own by the client: the wrong one fails verification.
    let certs = tempfile::tempdir().unwrap();
    for name in ["a.test", "b.test"] {
        cert_dir_entry(certs.path(), name);
    }
    let Fixture { sb, dir: _dir, .. } = Fixture::start(
        &[
            "--https",
            "127.0.0.1:0",
            "--tls-cert-dir",
            certs.path().to_str().unwrap(),
        ],
        &[("a.test", "/"), ("b.test", "/")],
        |d| {
            write_service(d, "site-a", "10.96.4.1", &[&a]);
            write_service(d, "site-b", "10.96.4.2", &[&b]);
            write(d, "ia.yaml", &simple_ingress("a.test", "site-a"));
            write(d, "ib.yaml", &simple_ingress("b.test", "site-b"));
        },
    )
    .await;

    let http = sb.listener("http");
    let (ok, out) = curl(&[
        "--http2-prior-knowledge",
        "-w",
        " %{http_version}",
        "-H",
        "Host: a.test",
        &format!("http://{http}/h2c"),
    ]);
    assert!(ok, "{out}");
    assert_eq!(out, "site-a /h2c\n 2");
    // Over HTTP/2 the path is also resolved, and the authority survives the rewrite.
    let (ok, out) = curl(&[
        "--http2-prior-knowledge",
        "--path-as-is",
        "-H",
        "Host: a.test",
        &format!("http://{http}/x/../h2c"),
    ]);
    assert!(ok, "{out}");
    assert_eq!(out, "site-a /h2c\n");

    // A request shorter than the HTTP/2 preface (an HTTP/1.0 health check) is answered too.
    let mut raw = TcpStream::connect(http).await.unwrap();
    raw.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let head = read_head(&mut raw).await;
    assert!(
        head.starts_with("HTTP/1.0 404") || head.starts_with("HTTP/1.1 404"),
        "{head}"
    );

    let https = sb.listener("https");
    for (name, site) in [("a.test", "site-a"), ("b.test", "site-b")] {
        let ca = certs.path().join(name).join("tls.crt");
        for proto in ["--http1.1", "--http2"] {
            let (ok, out) = curl(&[
                proto,
                "--cacert",
                ca.to_str().unwrap(),
                "--resolve",
                &format!("{name}:{}:127.0.0.1", https.port()),
                "-w",
                " %{http_version}",
                &format!("https://{name}:{}/tls", https.port()),
            ]);
            assert!(ok, "{name} {proto}: {out}");
            let version = if proto == "--http2" { "2" } else { "1.1" };
            assert_eq!(out, format!("{site} /tls\n {version}"));
        }
    }
    // SNI chooses the certificate: each name is presented its own and never the other's. The
    // certificate is taken without verification, so this fails if the wrong one is chosen.
    for (name, other) in [("a.test", "b.test"), ("b.test", "a.test")] {
        let own = pem_der(&certs.path().join(name).join("tls.crt"));
        let theirs = pem_der(&certs.path().join(other).join("tls.crt"));
        let got = presented_certificate(https, name).await;
        assert!(got != theirs, "{name} was served {other}'s certificate");
        assert!(got == own, "{name} was served an unknown certificate");
    }
    // X-Forwarded-Proto says https.
    let (ok, out) = curl(&[
        "-i",
        "--cacert",
        certs.path().join("a.test/tls.crt").to_str().unwrap(),
        "--resolve",
        &format!("a.test:{}:127.0.0.1", https.port()),
        &format!("https://a.test:{}/", https.port()),
    ]);
    assert!(
        ok && out
            .to_ascii_lowercase()
            .contains("x-echo-x-forwarded-proto: https"),
        "{out}"
    );
}

/// The DER bytes of the (single) certificate in the PEM file `path`.
fn pem_der(path: &Path) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

/// The leaf certificate the TLS listener `https` presents for SNI `name`. Nothing is verified
/// (the handshake signature aside), so the certificate the server chose is what is returned,
/// whichever it is.
async fn presented_certificate(https: SocketAddr, name: &str) -> Vec<u8> {
    use tokio_rustls::rustls::{
        self,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::CryptoProvider,
        pki_types::{CertificateDer, ServerName, UnixTime},
        DigitallySignedStruct, SignatureScheme,
    };
    #[derive(Debug)]
    struct Record(Arc<CryptoProvider>, std::sync::Mutex<Option<Vec<u8>>>);
    impl ServerCertVerifier for Record {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            *self.1.lock().unwrap() = Some(end_entity.to_vec());
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = &self.0.signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            let algs = &self.0.signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let record = Arc::new(Record(provider.clone(), Default::default()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(record.clone())
        .with_no_client_auth();
    let tcp = TcpStream::connect(https).await.unwrap();
    let sni = ServerName::try_from(name.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(Duration::from_secs(10), tls.connect(sni, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake");
    let got = record.1.lock().unwrap().take();
    got.expect("a certificate was presented")
}

/// `curl https://NAME:PORT/PATH` trusting only `ca`, with NAME resolved to the listener.
fn curl_tls(https: SocketAddr, name: &str, ca: &Path, path: &str) -> (bool, String) {
    curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &format!("{name}:{}:127.0.0.1", https.port()),
        &format!("https://{name}:{}{path}", https.port()),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificates_from_ingress_secrets() {
    let a = Backend::start("site-a").await;
    let b = Backend::start("site-b").await;
    let cas = tempfile::tempdir().unwrap();
    let (secret_a, ca_a) = tls_secret("cert-a", "a.test", cas.path(), "a1.crt");
    let (secret_b, ca_b) = tls_secret("cert-b", "b.test", cas.path(), "b.crt");
    // No --tls-cert-dir: every certificate comes from the Secrets.
    let Fixture { sb, dir, .. } = Fixture::start(
        &["--https", "127.0.0.1:0"],
        &[("a.test", "/"), ("b.test", "/")],
        |d| {
            write_service(d, "site-a", "10.96.5.1", &[&a]);
            write_service(d, "site-b", "10.96.5.2", &[&b]);
            write(d, "secret-a.yaml", &secret_a);
            write(d, "secret-b.yaml", &secret_b);
            write(
                d,
                "ingress.yaml",
                "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: secure, namespace: default}
spec:
  ingressClassName: switchboard
  tls:
  - hosts: [a.test]
    secretName: cert-a
  - hosts: [b.test]
    secretName: cert-b
  rules:
  - host: a.test
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: site-a, port: {number: 80}}}}]
  - host: b.test
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: site-b, port: {number: 80}}}}]
",
            );
        },
    )
    .await;
    let d = dir.path();
    let https = sb.listener("https");

    // Each name verifies against its own certificate only (each is its own CA), and the request
    // reaches the backend the Ingress names.
    for (name, site, ca, wrong) in [
        ("a.test", "site-a", &ca_a, &ca_b),
        ("b.test", "site-b", &ca_b, &ca_a),
    ] {
        let (ok, out) = curl_tls(https, name, ca, "/secret");
        assert!(ok, "{name}: {out}");
        assert_eq!(out, format!("{site} /secret\n"));
        // Taken without verification, so this fails if SNI picks the other Secret's certificate.
        let got = presented_certificate(https, name).await;
        assert!(
            got != pem_der(wrong),
            "{name} was served the other certificate"
        );
        assert!(
            got == pem_der(ca),
            "{name} was served an unknown certificate"
        );
    }
    let hits_a = a.hits.load(Ordering::SeqCst);

    // A new certificate in Secret cert-a is served without a restart.
    let (secret_a2, ca_a2) = tls_secret("cert-a", "a.test", cas.path(), "a2.crt");
    write(d, "secret-a.yaml", &secret_a2);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, out) = curl_tls(https, "a.test", &ca_a2, "/renewed");
        if ok {
            assert_eq!(out, "site-a /renewed\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new certificate for a.test not served: {out}\n{}",
            sb.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.hits.load(Ordering::SeqCst) > hits_a);
    let (ok, _) = curl_tls(https, "a.test", &ca_a, "/");
    assert!(!ok, "the replaced certificate must no longer be served");
    // b.test is untouched.
    let (ok, out) = curl_tls(https, "b.test", &ca_b, "/still");
    assert!(ok && out == "site-b /still\n", "{out}");
}

/// A backend that speaks only HTTP/2 without TLS (as gRPC servers do), answering its protocol
/// version.
async fn h2c_backend() -> SocketAddr {
    raw_backend(|stream, _| async move {
        let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
            let body = format!("h2c {:?} {}\n", req.version(), req.uri().path());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), svc)
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_backends_by_app_protocol() {
    let grpc = h2c_backend().await;
    let Fixture {
        sb, c, dir: _dir, ..
    } = Fixture::start(&[], &[], |d| {
        write(
            d,
            "svc.yaml",
            &service_yaml("default", "grpc", "10.96.10.1", &[(grpc, Cond::Ready)]).replace(
                "ports: [{name: http, port: 80, targetPort: 8080}]",
                "ports: [{name: http, port: 80, targetPort: 8080, appProtocol: kubernetes.io/h2c}]",
            ),
        );
        write(d, "ing.yaml", &simple_ingress("grpc.test", "grpc"));
    })
    .await;
    // An HTTP/1.1 client reaches an HTTP/2-only backend; so does an h2c client.
    let a = wait_get(
        &sb,
        &c,
        "grpc.test",
        "/svc/Method",
        "served over h2c",
        |x| x.status == 200,
    )
    .await;
    assert_eq!(a.body, "h2c HTTP/2.0 /svc/Method\n");
    let (ok, out) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: grpc.test",
        &format!("http://{}/x", sb.listener("http")),
    ]);
    assert!(ok, "{out}");
    assert_eq!(out, "h2c HTTP/2.0 /x\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_survives_100_table_swaps() {
    let ws = Backend::start("ws").await;
    let extra = Backend::start("extra").await;
    let Fixture { sb, dir, .. } = Fixture::start(&[], &[("ws.test", "/")], |d| {
        write_service(d, "ws", "10.96.5.1", &[&ws]);
        write(d, "ing.yaml", &simple_ingress("ws.test", "ws"));
    })
    .await;
    let d = dir.path();

    let mut s = TcpStream::connect(sb.listener("http")).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    let generation = || async {
        sb.metric("switchboard_snapshot_generation")
            .await
            .unwrap_or(0.0)
    };
    for i in 0..100 {
        // Swap the tables: the websocket's own service gains and loses an endpoint, and the
        // Ingress changes, every round.
        let g = generation().await;
        let eps = if i % 2 == 0 {
            ready(&[&ws, &extra])
        } else {
            ready(&[&ws])
        };
        write(
            d,
            "ws.yaml",
            &service_yaml("default", "ws", "10.96.5.1", &eps),
        );
        write(
            d,
            "ing.yaml",
            &simple_ingress("ws.test", "ws").replace("path: /,", &format!("path: /r{i},")),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while generation().await <= g {
            assert!(
                Instant::now() < deadline,
                "no new generation:\n{}",
                sb.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let msg = format!("message {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
            .await
            .expect("echo in time")
            .unwrap_or_else(|e| panic!("round {i}: {e}\n{}", sb.log()));
        assert_eq!(String::from_utf8(buf).unwrap(), msg);
    }
}
