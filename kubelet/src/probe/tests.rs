use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HTTPGetAction, HTTPHeader, Probe, TCPSocketAction,
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
    let listener = TcpListener::bind((LOCAL, 0)).await.unwrap();
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

#[tokio::test]
async fn https_and_grpc_are_unsupported() {
    let c = container();
    let mut a = http_action(1, "/");
    a.scheme = Some("HTTPS".into());
    let r = run(Action::HttpGet(&a), &target(&c), Duration::from_secs(1)).await;
    assert!(
        matches!(r, ProbeResult::Unknown(ProbeError::Unsupported("HTTPS"))),
        "{r:?}"
    );
    let r = run(Action::Grpc, &target(&c), Duration::from_secs(1)).await;
    assert!(
        matches!(r, ProbeResult::Unknown(ProbeError::Unsupported("gRPC"))),
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
