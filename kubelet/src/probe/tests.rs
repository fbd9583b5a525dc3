use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, GRPCAction, HTTPGetAction, HTTPHeader, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::handler::{Action, ProbeError, ProbeResult, Target, resolve_port, run};
use super::state::{ProbeKind, ProbeState, Settings};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn container() -> Container {
    Container {
        name: "web".into(),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: 8080,
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn target(c: &Container) -> Target<'_> {
    Target {
        cri: None,
        container_id: "c1",
        container: c,
        pod_ip: LOCAL,
    }
}

#[test]
fn ports_resolve_by_number_and_name() {
    let c = container();
    assert_eq!(resolve_port(&IntOrString::Int(80), &c).unwrap(), 80);
    assert_eq!(
        resolve_port(&IntOrString::String("http".into()), &c).unwrap(),
        8080
    );
    assert!(matches!(
        resolve_port(&IntOrString::String("grpc".into()), &c),
        Err(ProbeError::NamedPort { .. })
    ));
    assert!(matches!(
        resolve_port(&IntOrString::Int(70000), &c),
        Err(ProbeError::PortRange(70000))
    ));
    assert!(matches!(
        resolve_port(&IntOrString::Int(0), &c),
        Err(ProbeError::PortRange(0))
    ));
}

fn tcp_action(port: u16) -> TCPSocketAction {
    TCPSocketAction {
        host: None,
        port: IntOrString::Int(i32::from(port)),
    }
}

#[tokio::test]
async fn tcp_succeeds_on_a_listener_and_fails_without() {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let c = container();
    let a = tcp_action(port);
    let r = run(Action::TcpSocket(&a), &target(&c), Duration::from_secs(1)).await;
    assert!(r.is_success(), "{r:?}");
    drop(listener);
    let r = run(Action::TcpSocket(&a), &target(&c), Duration::from_secs(1)).await;
    assert!(matches!(r, ProbeResult::Failure(_)), "{r:?}");
}

/// Answers each connection with `status` and hands back the request head.
async fn http_server(status: u16, delay: Duration) -> (u16, tokio::sync::mpsc::Receiver<String>) {
    http_server_on(LOCAL, status, delay).await
}

async fn http_server_on(
    ip: IpAddr,
    status: u16,
    delay: Duration,
) -> (u16, tokio::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let Ok(n) = s.read(&mut buf).await else { break };
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned()).await;
            tokio::time::sleep(delay).await;
            let body = "ok";
            let resp = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    (port, rx)
}

fn http_action(port: u16, path: &str) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::Int(i32::from(port)),
        http_headers: Some(vec![HTTPHeader {
            name: "X-Probe".into(),
            value: "yes".into(),
        }]),
        ..Default::default()
    }
}

#[tokio::test]
async fn http_status_ranges() {
    let c = container();
    for (status, ok) in [
        (200, true),
        (204, true),
        (302, true),
        (399, true),
        (400, false),
        (500, false),
    ] {
        let (port, _rx) = http_server(status, Duration::ZERO).await;
        let a = http_action(port, "/healthz");
        let r = run(Action::HttpGet(&a), &target(&c), Duration::from_secs(2)).await;
        assert_eq!(r.is_success(), ok, "status {status}: {r:?}");
    }
}

#[tokio::test]
async fn http_sends_path_and_headers() {
    let c = container();
    let (port, mut rx) = http_server(200, Duration::ZERO).await;
    let a = http_action(port, "healthz?x=1");
    let r = run(Action::HttpGet(&a), &target(&c), Duration::from_secs(2)).await;
    assert!(r.is_success(), "{r:?}");
    let head = rx.recv().await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("get /healthz?x=1 http/1.1\r\n"), "{head}");
    assert!(head.contains("x-probe: yes"), "{head}");
    assert!(head.contains("user-agent: kube-probe/"), "{head}");
    assert!(head.contains(&format!("host: 127.0.0.1:{port}")), "{head}");
}

#[tokio::test]
async fn http_times_out() {
    let c = container();
    let (port, _rx) = http_server(200, Duration::from_secs(5)).await;
    let a = http_action(port, "/");
    let r = run(Action::HttpGet(&a), &target(&c), Duration::from_millis(200)).await;
    assert!(
        matches!(&r, ProbeResult::Failure(m) if m.contains("timeout")),
        "{r:?}"
    );
}

/// A TLS server side with a self-signed certificate for `example.test`,
/// offering the protocol `alpn`.
fn tls_acceptor(alpn: &[u8]) -> tokio_rustls::TlsAcceptor {
    let cert = rcgen::generate_simple_self_signed(vec!["example.test".to_owned()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

/// An HTTPS server with a self-signed certificate for `example.test`,
/// answering `status`.
async fn https_server(status: u16) -> u16 {
    let acceptor = tls_acceptor(b"http/1.1");
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let Ok(mut s) = acceptor.accept(s).await else {
                continue;
            };
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let resp =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
            let _ = s.write_all(resp.as_bytes()).await;
            let _ = s.shutdown().await;
        }
    });
    port
}

#[tokio::test]
async fn https_does_not_verify_the_certificate() {
    let c = container();
    for (status, ok) in [(200, true), (503, false)] {
        let port = https_server(status).await;
        let mut a = http_action(port, "/");
        a.scheme = Some("HTTPS".into());
        let r = run(Action::HttpGet(&a), &target(&c), Duration::from_secs(2)).await;
        assert_eq!(r.is_success(), ok, "status {status}: {r:?}");
    }
    // A plain HTTP server fails the handshake: a failure, not a success.
    let (port, _rx) = http_server(200, Duration::ZERO).await;
    let mut a = http_action(port, "/");
    a.scheme = Some("HTTPS".into());
    let r = run(Action::HttpGet(&a), &target(&c), Duration::from_secs(2)).await;
    assert!(
        matches!(&r, ProbeResult::Failure(m) if m.contains("https://")),
        "{r:?}"
    );
}

#[tokio::test]
async fn an_unknown_scheme_is_refused() {
    let c = container();
    let mut a = http_action(1, "/");
    a.scheme = Some("FTP".into());
    let r = run(Action::HttpGet(&a), &target(&c), Duration::from_secs(1)).await;
    assert!(
        matches!(&r, ProbeResult::Unknown(ProbeError::Scheme(s)) if s == "FTP"),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_host_name_is_resolved_and_sent() {
    let c = container();
    let local = tokio::net::lookup_host(("localhost", 0))
        .await
        .unwrap()
        .next()
        .unwrap()
        .ip();
    let (port, mut rx) = http_server_on(local, 200, Duration::ZERO).await;
    let mut a = http_action(port, "/");
    a.host = Some("localhost".into());
    let r = run(Action::HttpGet(&a), &target(&c), Duration::from_secs(2)).await;
    assert!(r.is_success(), "{r:?}");
    let head = rx.recv().await.unwrap().to_ascii_lowercase();
    assert!(head.contains(&format!("host: localhost:{port}")), "{head}");
    let t = TCPSocketAction {
        host: Some("localhost".into()),
        port: IntOrString::Int(i32::from(port)),
    };
    let r = run(Action::TcpSocket(&t), &target(&c), Duration::from_secs(2)).await;
    assert!(r.is_success(), "{r:?}");
}

#[tokio::test]
async fn an_unresolvable_host_is_no_answer() {
    let c = container();
    let mut a = http_action(80, "/");
    a.host = Some("no-such-host.invalid".into());
    let r = run(Action::HttpGet(&a), &target(&c), Duration::from_secs(1)).await;
    assert!(
        matches!(&r, ProbeResult::Unknown(ProbeError::Host { host, .. }) if host == "no-such-host.invalid"),
        "{r:?}"
    );
}

#[test]
fn settings_defaults_and_forced_success_threshold() {
    let s = Settings::of(ProbeKind::Readiness, &Probe::default());
    assert_eq!(s.period, Duration::from_secs(10));
    assert_eq!(s.timeout, Duration::from_secs(1));
    assert_eq!((s.success_threshold, s.failure_threshold), (1, 3));
    assert_eq!(s.initial_delay, Duration::ZERO);
    let p = Probe {
        success_threshold: Some(3),
        failure_threshold: Some(2),
        initial_delay_seconds: Some(5),
        period_seconds: Some(0),
        ..Default::default()
    };
    assert_eq!(Settings::of(ProbeKind::Readiness, &p).success_threshold, 3);
    let live = Settings::of(ProbeKind::Liveness, &p);
    assert_eq!(live.success_threshold, 1);
    assert_eq!(live.failure_threshold, 2);
    assert_eq!(live.initial_delay, Duration::from_secs(5));
    assert_eq!(live.period, Duration::from_secs(10));
}

fn state(kind: ProbeKind, success: u32, failure: u32) -> ProbeState {
    let p = Probe {
        success_threshold: Some(i32::try_from(success).unwrap()),
        failure_threshold: Some(i32::try_from(failure).unwrap()),
        ..Default::default()
    };
    ProbeState::new(kind, Settings::of(kind, &p))
}

#[test]
fn initial_results_as_upstream() {
    assert_eq!(state(ProbeKind::Liveness, 1, 3).reported(), Some(true));
    assert_eq!(state(ProbeKind::Readiness, 1, 3).reported(), Some(false));
    assert_eq!(state(ProbeKind::Startup, 1, 3).reported(), None);
}

#[test]
fn liveness_fails_after_the_threshold_then_holds() {
    let mut s = state(ProbeKind::Liveness, 1, 3);
    assert_eq!(s.record(false), None);
    assert_eq!(s.record(false), None);
    // A success in between starts the count over.
    assert_eq!(s.record(true), Some(true));
    assert_eq!(s.record(false), None);
    assert_eq!(s.record(false), None);
    assert_eq!(s.record(false), Some(false));
    assert!(s.on_hold());
    assert_eq!(s.record(true), None);
    assert_eq!(s.reported(), Some(false));
}

#[test]
fn readiness_needs_consecutive_successes_and_never_holds() {
    let mut s = state(ProbeKind::Readiness, 2, 2);
    assert_eq!(s.record(true), None);
    assert_eq!(s.record(true), Some(true));
    assert_eq!(s.record(false), None);
    assert_eq!(s.reported(), Some(true));
    assert_eq!(s.record(false), Some(false));
    assert!(!s.on_hold());
    assert_eq!(s.record(true), None);
    assert_eq!(s.record(true), Some(true));
}

#[test]
fn startup_passes_on_first_success() {
    let mut s = state(ProbeKind::Startup, 5, 2);
    assert_eq!(s.record(false), None);
    assert_eq!(s.record(true), Some(true));
    assert_eq!(s.reported(), Some(true));
    let mut s = state(ProbeKind::Startup, 1, 2);
    assert_eq!(s.record(false), None);
    assert_eq!(s.record(false), Some(false));
    assert!(s.on_hold());
}

/// A gRPC health server: `SERVING` for the empty service and `web`,
/// `NOT_SERVING` for `down`, `NOT_FOUND` for anything else.
mod health_server {
    use std::convert::Infallible;
    use std::future::{Ready, ready};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tonic::body::Body;
    use tonic::server::{Grpc, NamedService, UnaryService};
    use tonic::{Request, Response, Status};

    use crate::probe::grpc::{CHECK_PATH, HealthCheckRequest, HealthCheckResponse, ServingStatus};

    #[derive(Clone)]
    pub struct Health;

    impl NamedService for Health {
        const NAME: &'static str = "grpc.health.v1.Health";
    }

    struct Check;

    impl UnaryService<HealthCheckRequest> for Check {
        type Response = HealthCheckResponse;
        type Future = Ready<Result<Response<HealthCheckResponse>, Status>>;

        fn call(&mut self, request: Request<HealthCheckRequest>) -> Self::Future {
            let status = match request.get_ref().service.as_str() {
                "" | "web" => ServingStatus::Serving,
                "down" => ServingStatus::NotServing,
                other => return ready(Err(Status::not_found(format!("unknown service {other}")))),
            };
            ready(Ok(Response::new(HealthCheckResponse {
                status: status as i32,
            })))
        }
    }

    type Reply = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    impl tower::Service<http::Request<Body>> for Health {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Reply;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<Body>) -> Self::Future {
            Box::pin(async move {
                if req.uri().path() != CHECK_PATH {
                    return Ok(Status::unimplemented("only Check").into_http());
                }
                let mut grpc = Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(Check, req).await)
            })
        }
    }
}

async fn grpc_server() -> u16 {
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_server::Health)
            .serve_with_incoming(incoming),
    );
    port
}

fn grpc_action(port: u16, service: Option<&str>) -> GRPCAction {
    GRPCAction {
        port: i32::from(port),
        service: service.map(str::to_owned),
        mode: None,
    }
}

#[tokio::test]
async fn grpc_serving_is_success() {
    let c = container();
    let port = grpc_server().await;
    for (service, ok, message) in [
        (None, true, ""),
        (Some("web"), true, ""),
        (Some("down"), false, "NOT_SERVING"),
        (Some("other"), false, "NotFound"),
    ] {
        let a = grpc_action(port, service);
        let r = run(Action::Grpc(&a), &target(&c), Duration::from_secs(2)).await;
        assert_eq!(r.is_success(), ok, "{service:?}: {r:?}");
        if !ok {
            assert!(
                matches!(&r, ProbeResult::Failure(m) if m.contains(message)),
                "{service:?}: {r:?}"
            );
        }
    }
}

#[tokio::test]
async fn grpc_without_a_health_server_fails() {
    let c = container();
    // An HTTP/1 server does not speak gRPC.
    let (port, _rx) = http_server(200, Duration::ZERO).await;
    let a = grpc_action(port, None);
    let r = run(Action::Grpc(&a), &target(&c), Duration::from_secs(2)).await;
    assert!(matches!(r, ProbeResult::Failure(_)), "{r:?}");
    // Nothing listening.
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let closed = listener.local_addr().unwrap().port();
    drop(listener);
    let a = grpc_action(closed, None);
    let r = run(Action::Grpc(&a), &target(&c), Duration::from_secs(2)).await;
    assert!(matches!(r, ProbeResult::Failure(_)), "{r:?}");
    let a = grpc_action(0, None);
    let r = run(Action::Grpc(&a), &target(&c), Duration::from_secs(2)).await;
    assert!(
        matches!(r, ProbeResult::Unknown(ProbeError::PortRange(0))),
        "{r:?}"
    );
}

#[tokio::test]
async fn grpc_over_tls_does_not_verify_the_certificate() {
    // A TLS-terminating proxy in front of the plaintext health server.
    let plain = grpc_server().await;
    let acceptor = tls_acceptor(b"h2");
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut upstream) = tokio::net::TcpStream::connect((LOCAL, plain)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    let c = container();
    let mut a = grpc_action(port, None);
    a.mode = Some("TLS".into());
    let r = run(Action::Grpc(&a), &target(&c), Duration::from_secs(2)).await;
    assert!(r.is_success(), "{r:?}");
    // Plaintext against a TLS server fails.
    a.mode = Some("Plaintext".into());
    let r = run(Action::Grpc(&a), &target(&c), Duration::from_secs(2)).await;
    assert!(matches!(r, ProbeResult::Failure(_)), "{r:?}");
    a.mode = Some("Quantum".into());
    let r = run(Action::Grpc(&a), &target(&c), Duration::from_secs(2)).await;
    assert!(
        matches!(&r, ProbeResult::Unknown(ProbeError::GrpcMode(m)) if m == "Quantum"),
        "{r:?}"
    );
}
