use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::AtomicBool;

use jiff::Timestamp;
use rstest::rstest;

use super::logs::{self, Assembler, LogError, LogOptions, Renderer, parse_line};
use super::metrics::{KubeletMetrics, operation_type, render_cadvisor};
use super::stats::{
    self, ContainerSample, InterfaceStats, LogUsage, MemorySample, NodeSample, SandboxSample,
};
use super::stream::{StreamOptions, query_ports, target};
use super::{pod_list, query_pairs, tls};
use crate::cri_client::OperationObserver;

fn pairs(q: &str) -> Vec<(String, String)> {
    query_pairs(Some(q))
}

const LOG: &str = "\
2024-01-02T03:04:05.000000001Z stdout F first
2024-01-02T03:04:06.000000000Z stderr F oops
2024-01-02T03:04:07.000000000Z stdout P par
2024-01-02T03:04:07.500000000Z stdout P tia
2024-01-02T03:04:08.000000000Z stdout F l line
not a cri line
2024-01-02T03:04:09.000000000Z stdout F last
";

fn now() -> Timestamp {
    "2024-01-02T03:04:10Z".parse().unwrap()
}

#[test]
fn cri_lines_parse() {
    let l = parse_line(b"2024-01-02T03:04:05.123456789Z stderr F hello world").unwrap();
    assert_eq!(l.stream, "stderr");
    assert!(!l.partial);
    assert_eq!(l.content, b"hello world");
    assert_eq!(l.time_text, "2024-01-02T03:04:05.123456789Z");
    let empty = parse_line(b"2024-01-02T03:04:05Z stdout P").unwrap();
    assert!(empty.partial);
    assert_eq!(empty.content, b"");
}

#[rstest]
#[case(b"nonsense stdout F x", "RFC 3339")]
#[case(b"2024-01-02T03:04:05Z stdin F x", "neither stdout nor stderr")]
#[case(b"2024-01-02T03:04:05Z stdout X x", "neither P nor F")]
#[case(b"2024-01-02T03:04:05Z", "no stream")]
fn bad_cri_lines_say_why(#[case] line: &[u8], #[case] why: &str) {
    let e = parse_line(line).unwrap_err().to_string();
    assert!(e.contains(why), "{e}");
}

fn render_all(opts: &LogOptions) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    std::fs::write(&path, LOG).unwrap();
    let mut out = Vec::new();
    logs::stream_log(&path, opts, &AtomicBool::new(true), |c| {
        out.extend(c);
        true
    })
    .unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn partial_lines_join_and_junk_is_skipped() {
    assert_eq!(
        render_all(&LogOptions::default()),
        "first\noops\npartial line\nlast\n"
    );
}

#[test]
fn partial_lines_join_per_stream() {
    let mut a = Assembler::default();
    let p1 = parse_line(b"2024-01-02T03:04:05Z stdout P a").unwrap();
    let e = parse_line(b"2024-01-02T03:04:05Z stderr F err").unwrap();
    let p2 = parse_line(b"2024-01-02T03:04:06Z stdout F b").unwrap();
    assert_eq!(a.push(&p1), None);
    assert_eq!(a.push(&e).unwrap().content, b"err");
    let m = a.push(&p2).unwrap();
    assert_eq!(m.content, b"ab");
    assert_eq!(m.time_text, "2024-01-02T03:04:05Z");
}

#[rstest]
#[case("tailLines=2", "partial line\nlast\n")]
#[case("tailLines=0", "")]
#[case("tailLines=-1", "first\noops\npartial line\nlast\n")]
#[case("tailLines=10", "first\noops\npartial line\nlast\n")]
#[case("limitBytes=8", "first\noo")]
#[case("tailLines=1&limitBytes=100", "last\n")]
#[case("timestamps=true&tailLines=1", "2024-01-02T03:04:09.000000000Z last\n")]
// 3 seconds before 03:04:10: the joined line counts from its first part (03:04:07).
#[case("sinceSeconds=3", "partial line\nlast\n")]
#[case("sinceTime=2024-01-02T03:04:06Z", "oops\npartial line\nlast\n")]
#[case("sinceTime=2024-01-02T03:04:06Z&tailLines=1", "last\n")]
fn log_options_shape_the_output(#[case] q: &str, #[case] want: &str) {
    let opts = LogOptions::from_query(&pairs(q), now()).unwrap();
    assert_eq!(render_all(&opts), want, "{q}");
}

#[rstest]
#[case("follow=maybe", "follow=\"maybe\": not a boolean")]
#[case("tailLines=x", "tailLines=\"x\": not an integer")]
#[case("limitBytes=0", "limitBytes=\"0\": must be greater than 0")]
#[case("sinceSeconds=-5", "sinceSeconds=\"-5\": must be greater than 0")]
#[case("sinceTime=yesterday", "sinceTime=\"yesterday\": not an RFC 3339 time")]
#[case("sinceSeconds=1&sinceTime=2024-01-02T03:04:06Z", "exclusive")]
fn bad_log_queries_name_the_parameter(#[case] q: &str, #[case] want: &str) {
    let e = LogOptions::from_query(&pairs(q), now()).unwrap_err();
    assert!(e.to_string().contains(want), "{e}");
}

#[test]
fn log_flags_parse() {
    let o = LogOptions::from_query(
        &pairs("follow=true&previous=1&timestamps&container=c"),
        now(),
    )
    .unwrap();
    assert!(o.follow && o.previous && o.timestamps);
    assert_eq!(o.container.as_deref(), Some("c"));
}

#[test]
fn renderer_stops_at_the_limit() {
    let opts = LogOptions {
        limit_bytes: Some(3),
        ..LogOptions::default()
    };
    let mut r = Renderer::new(&opts);
    let m = logs::Message {
        time_text: "t".into(),
        time: now(),
        content: b"hello".to_vec(),
    };
    assert_eq!(r.render(&m), b"hel");
    assert!(r.done());
    assert_eq!(r.render(&m), b"");
}

#[test]
fn follow_reads_new_lines_and_survives_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    std::fs::write(&path, "2024-01-02T03:04:05Z stdout F one\n").unwrap();
    let exited = std::sync::Arc::new(AtomicBool::new(false));
    let opts = LogOptions {
        follow: true,
        ..LogOptions::default()
    };
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = {
        let path = path.clone();
        let exited = exited.clone();
        std::thread::spawn(move || {
            logs::stream_log(&path, &opts, &exited, |c| tx.send(c).is_ok()).unwrap();
        })
    };
    let mut got = Vec::new();
    let mut wait_for = |want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !String::from_utf8_lossy(&got).contains(want) {
            assert!(
                std::time::Instant::now() < deadline,
                "{want} not in {got:?}"
            );
            if let Ok(c) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
                got.extend(c);
            }
        }
    };
    wait_for("one\n");
    // A line written in two writes arrives whole.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"2024-01-02T03:04:06Z stdout P tw").unwrap();
    f.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    f.write_all(b"o\n2024-01-02T03:04:06Z stdout F !\n")
        .unwrap();
    wait_for("two!\n");
    // Rotated: renamed away, a new file in its place.
    std::fs::rename(&path, dir.path().join("0.log.1")).unwrap();
    std::fs::write(&path, "2024-01-02T03:04:07Z stdout F three\n").unwrap();
    wait_for("three\n");
    exited.store(true, std::sync::atomic::Ordering::Release);
    reader.join().unwrap();
    assert_eq!(String::from_utf8(got).unwrap(), "one\ntwo!\nthree\n");
}

#[test]
fn a_missing_log_file_is_named() {
    let e = logs::stream_log(
        std::path::Path::new("/nonexistent/0.log"),
        &LogOptions::default(),
        &AtomicBool::new(true),
        |_| true,
    )
    .unwrap_err();
    assert!(matches!(e, LogError::Read { .. }));
    assert!(e.to_string().contains("/nonexistent/0.log"), "{e}");
}

#[test]
fn exec_queries_parse_as_upstream() {
    let o = StreamOptions::from_query(&pairs(
        "command=sh&command=-c&command=echo%20hi&input=1&output=1&error=1",
    ))
    .unwrap();
    assert_eq!(o.command, ["sh", "-c", "echo hi"]);
    assert!(o.stdin && o.stdout && o.stderr && !o.tty);
    let r = o.exec_request("abc").unwrap();
    assert_eq!(r.container_id, "abc");
    assert_eq!(r.cmd, ["sh", "-c", "echo hi"]);
    // A terminal has no separate stderr.
    let t = StreamOptions::from_query(&pairs("command=sh&output=1&error=1&tty=1")).unwrap();
    assert!(t.tty && t.stdout && !t.stderr);
}

#[test]
fn exec_queries_without_streams_or_command_are_refused() {
    let e = StreamOptions::from_query(&pairs("command=ls")).unwrap_err();
    assert!(
        e.to_string()
            .contains("at least 1 of stdin, stdout, stderr")
    );
    let o = StreamOptions::from_query(&pairs("output=1")).unwrap();
    assert!(
        o.exec_request("x")
            .unwrap_err()
            .to_string()
            .contains("no command")
    );
}

#[test]
fn port_forward_ports_parse() {
    assert_eq!(
        query_ports(&pairs("port=80&port=8080,9090")).unwrap(),
        [80, 8080, 9090]
    );
    assert!(query_ports(&pairs("")).unwrap().is_empty());
    for bad in ["port=0", "port=70000", "port=http"] {
        let e = query_ports(&pairs(bad)).unwrap_err();
        assert!(e.to_string().contains("not a port number"), "{bad}: {e}");
    }
}

#[rstest]
#[case(
    "http://127.0.0.1:3456/exec/tok",
    Some("command=ls"),
    "127.0.0.1:3456",
    "/exec/tok?command=ls"
)]
#[case(
    "http://127.0.0.1:3456/exec/tok?a=b",
    Some("command=ls"),
    "127.0.0.1:3456",
    "/exec/tok?a=b"
)]
#[case("http://[::1]/attach/t", None, "[::1]:80", "/attach/t")]
fn runtime_urls_split(
    #[case] url: &str,
    #[case] q: Option<&str>,
    #[case] addr: &str,
    #[case] path: &str,
) {
    assert_eq!(target(url, q).unwrap(), (addr.to_owned(), path.to_owned()));
}

#[test]
fn unusable_runtime_urls_are_refused() {
    for (url, why) in [
        ("https://127.0.0.1:1/exec/t", "https"),
        ("ftp://x/exec/t", "not an http URL"),
        ("/exec/t", "not an http URL"),
    ] {
        let e = target(url, None).unwrap_err().to_string();
        assert!(e.contains(why) && e.contains(url), "{url}: {e}");
    }
}

#[test]
fn pod_list_is_a_v1_pod_list() {
    let mut p = k8s_openapi::api::core::v1::Pod::default();
    p.metadata.name = Some("web".into());
    let v = pod_list(&[std::sync::Arc::new(p)]);
    assert_eq!(v["kind"], "PodList");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["metadata"], serde_json::json!({}));
    assert_eq!(v["items"][0]["metadata"]["name"], "web");
    assert_eq!(pod_list(&[])["items"], serde_json::json!([]));
}

fn sample(pod: &str, name: &str, created: i64, cpu: u64, ws: u64) -> ContainerSample {
    ContainerSample {
        id: format!("{pod}-{name}-{created}"),
        name: name.into(),
        pod_name: pod.into(),
        pod_namespace: "ns".into(),
        pod_uid: format!("uid-{pod}"),
        image: "busybox:1".into(),
        state: "running",
        created_at: created,
        sampled_at: 1_700_000_000_000_000_000,
        cpu_core_nanos: Some(cpu),
        cpu_nano_cores: None,
        memory: Some(MemorySample {
            working_set: Some(ws),
            usage: Some(ws * 2),
            ..MemorySample::default()
        }),
        rootfs_used: Some(10),
        rootfs_inodes_used: None,
    }
}

#[test]
fn summary_has_each_pod_with_its_newest_containers_and_sums() {
    let pods = BTreeMap::from([
        (
            "uid-a".to_owned(),
            (
                "ns".to_owned(),
                "a".to_owned(),
                Some("2024-01-02T03:04:05Z".to_owned()),
            ),
        ),
        ("uid-b".to_owned(), ("ns".to_owned(), "b".to_owned(), None)),
    ]);
    let containers = vec![
        sample("a", "main", 1, 100, 1000),
        // A newer attempt replaces the older one.
        sample("a", "main", 2, 300, 3000),
        sample("a", "side", 1, 50, 500),
        // Not one of the store's pods: left out.
        sample("z", "main", 1, 1, 1),
    ];
    let logs = LogUsage::from([("a-main-2".to_owned(), 7u64)]);
    let s = stats::summary(
        "node1",
        NodeSample::default(),
        &pods,
        &[],
        &containers,
        &logs,
    );
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["node"]["nodeName"], "node1");
    assert_eq!(v["pods"].as_array().unwrap().len(), 2);
    let a = &v["pods"][0];
    assert_eq!(
        a["podRef"],
        serde_json::json!({"name": "a", "namespace": "ns", "uid": "uid-a"})
    );
    assert_eq!(a["startTime"], "2024-01-02T03:04:05Z");
    let names: Vec<&str> = a["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["main", "side"]);
    assert_eq!(a["containers"][0]["cpu"]["usageCoreNanoSeconds"], 300);
    assert_eq!(a["containers"][0]["memory"]["workingSetBytes"], 3000);
    assert_eq!(a["containers"][0]["logs"]["usedBytes"], 7);
    assert_eq!(a["containers"][0]["rootfs"]["usedBytes"], 10);
    assert!(a["containers"][1].get("logs").is_none());
    assert_eq!(a["cpu"]["usageCoreNanoSeconds"], 350);
    assert_eq!(a["memory"]["workingSetBytes"], 3500);
    assert_eq!(a["memory"]["usageBytes"], 7000);
    assert_eq!(a["ephemeral-storage"]["usedBytes"], 27);
    assert_eq!(a["cpu"]["time"], "2023-11-14T22:13:20Z");
    // A pod without containers yet is listed without numbers.
    let b = &v["pods"][1];
    assert_eq!(b["containers"], serde_json::json!([]));
    assert!(b.get("cpu").is_none() && b.get("memory").is_none());
}

#[test]
fn node_sample_reads_proc_and_the_root_fs() {
    let dir = tempfile::tempdir().unwrap();
    let n = stats::node_sample(dir.path(), now());
    let mem = n.memory.unwrap();
    assert!(mem.usage_bytes.unwrap() > 0 && mem.available_bytes.is_some());
    assert!(n.cpu.unwrap().usage_core_nano_seconds.unwrap() > 0);
    let fs = n.fs.unwrap();
    assert!(fs.capacity_bytes.unwrap() >= fs.available_bytes.unwrap());
    assert_eq!(fs.time, "2024-01-02T03:04:10Z");
}

#[rstest]
#[case("RunPodSandbox", "run_podsandbox")]
#[case("ListPodSandbox", "list_podsandbox")]
#[case("PodSandboxStatus", "podsandbox_status")]
#[case("CreateContainer", "create_container")]
#[case("Version", "version")]
fn operation_types_are_upstreams(#[case] rpc: &str, #[case] want: &str) {
    assert_eq!(operation_type(rpc), want);
}

#[test]
fn kubelet_metrics_count_operations_and_starts() {
    let m = KubeletMetrics::new();
    m.observe("RunPodSandbox", std::time::Duration::from_millis(20), true);
    m.observe(
        "StartContainer",
        std::time::Duration::from_millis(20),
        false,
    );
    let containers = [sample("a", "main", 1, 1, 1)];
    let text = m.render(1, &containers).unwrap();
    for line in [
        "kubelet_running_pods 1",
        "kubelet_running_containers{container_state=\"running\"} 1",
        "kubelet_started_pods_total 1",
        "kubelet_started_containers_errors_total{container_type=\"container\"} 1",
        "kubelet_runtime_operations_total{operation_type=\"run_podsandbox\"} 1",
        "kubelet_runtime_operations_errors_total{operation_type=\"start_container\"} 1",
        "kubelet_runtime_operations_duration_seconds_bucket{le=\"0.025\",operation_type=\"run_podsandbox\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
    assert!(text.contains("process_resident_memory_bytes "), "{text}");
}

#[test]
fn cadvisor_metrics_carry_the_containers_labels() {
    let text = render_cadvisor(&[sample("a", "main", 1, 2_500_000_000, 4096)]).unwrap();
    let labels = "container=\"main\",id=\"/a-main-1\",image=\"busybox:1\",name=\"a-main-1\",namespace=\"ns\",pod=\"a\"";
    for line in [
        format!("container_cpu_usage_seconds_total{{{labels}}} 2.5"),
        format!("container_memory_working_set_bytes{{{labels}}} 4096"),
        format!("container_memory_usage_bytes{{{labels}}} 8192"),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
}

#[test]
fn the_self_signed_certificate_is_made_once_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let settings = tls::TlsSettings {
        pki_dir: dir.path().join("pki"),
        hosts: vec!["node1".into(), "localhost".into(), "127.0.0.1".into()],
        ..tls::TlsSettings::default()
    };
    let (crt, key) = tls::serving_files(&settings).unwrap();
    let first = std::fs::read(&crt).unwrap();
    // Two certificates: the serving one, then its CA.
    assert_eq!(tls::read_certs("certificate", &crt).unwrap().len(), 2);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Kept across restarts.
    tls::serving_files(&settings).unwrap();
    assert_eq!(std::fs::read(&crt).unwrap(), first);
    tls::server_config(&settings).unwrap();
    tls::client_config(&crt).unwrap();
}

#[test]
fn given_certificates_are_used_and_bad_ones_named() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = tls::generate_self_signed(&["x".into()]).unwrap();
    let c = dir.path().join("c.pem");
    let k = dir.path().join("k.pem");
    std::fs::write(&c, cert).unwrap();
    std::fs::write(&k, key).unwrap();
    let mut s = tls::TlsSettings {
        cert_file: Some(c.clone()),
        key_file: Some(k.clone()),
        pki_dir: dir.path().join("pki"),
        ..tls::TlsSettings::default()
    };
    tls::server_config(&s).unwrap();
    assert!(!dir.path().join("pki").exists());
    s.client_ca_file = Some(c.clone());
    tls::server_config(&s).unwrap();
    let half = tls::TlsSettings {
        key_file: None,
        ..s.clone()
    };
    let e = tls::server_config(&half).unwrap_err().to_string();
    assert!(e.contains("give both or neither"), "{e}");
    s.client_ca_file = Some(dir.path().join("missing.pem"));
    let e = tls::server_config(&s).unwrap_err().to_string();
    assert!(e.contains("missing.pem"), "{e}");
    std::fs::write(&k, "junk").unwrap();
    let e = tls::server_config(&s).unwrap_err().to_string();
    assert!(e.contains("k.pem") && e.contains("private key"), "{e}");
}

#[test]
fn a_pods_sandbox_stats_give_its_cpu_memory_network_and_processes() {
    let pods = BTreeMap::from([("uid-a".to_owned(), ("ns".to_owned(), "a".to_owned(), None))]);
    let eth0 = InterfaceStats {
        name: "eth0".into(),
        rx_bytes: Some(100),
        tx_bytes: Some(200),
        ..InterfaceStats::default()
    };
    let sandbox = SandboxSample {
        pod_uid: "uid-a".into(),
        sampled_at: 1_700_000_000_000_000_000,
        cpu_core_nanos: Some(9000),
        cpu_nano_cores: Some(5),
        memory: Some(MemorySample {
            working_set: Some(123),
            ..MemorySample::default()
        }),
        interfaces: vec![
            eth0,
            InterfaceStats {
                name: "net1".into(),
                ..InterfaceStats::default()
            },
        ],
        process_count: Some(4),
    };
    let containers = [sample("a", "main", 1, 100, 1000)];
    let s = stats::summary(
        "n",
        NodeSample::default(),
        &pods,
        &[sandbox],
        &containers,
        &LogUsage::new(),
    );
    let a = &serde_json::to_value(&s).unwrap()["pods"][0];
    assert_eq!(a["cpu"]["usageCoreNanoSeconds"], 9000);
    assert_eq!(a["cpu"]["usageNanoCores"], 5);
    assert_eq!(a["memory"]["workingSetBytes"], 123);
    assert_eq!(a["network"]["name"], "eth0");
    assert_eq!(a["network"]["rxBytes"], 100);
    assert_eq!(a["network"]["txBytes"], 200);
    assert_eq!(a["network"]["interfaces"][1]["name"], "net1");
    assert_eq!(a["process_stats"]["process_count"], 4);
    // The container's own numbers stay the container's.
    assert_eq!(a["containers"][0]["cpu"]["usageCoreNanoSeconds"], 100);
}

#[test]
fn sandbox_stats_are_read_by_pod_uid() {
    use berth_proto::v1;
    let st = v1::PodSandboxStats {
        attributes: Some(v1::PodSandboxAttributes {
            id: "sb".into(),
            metadata: Some(v1::PodSandboxMetadata {
                uid: "uid-a".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        linux: Some(v1::LinuxPodSandboxStats {
            network: Some(v1::NetworkUsage {
                timestamp: 7,
                default_interface: Some(v1::NetworkInterfaceUsage {
                    name: "eth0".into(),
                    rx_bytes: Some(v1::UInt64Value { value: 1 }),
                    ..Default::default()
                }),
                interfaces: vec![v1::NetworkInterfaceUsage {
                    name: "eth0".into(),
                    ..Default::default()
                }],
            }),
            process: Some(v1::ProcessUsage {
                timestamp: 7,
                process_count: Some(v1::UInt64Value { value: 3 }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let got = stats::sandbox_samples(&[st, v1::PodSandboxStats::default()]);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].pod_uid, "uid-a");
    assert_eq!(got[0].sampled_at, 7);
    assert_eq!(got[0].interfaces.len(), 1);
    assert_eq!(got[0].interfaces[0].rx_bytes, Some(1));
    assert_eq!(got[0].process_count, Some(3));
}
