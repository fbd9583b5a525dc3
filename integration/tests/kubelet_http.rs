//! The kubelet's HTTP API and `berth pods`/`logs`/`exec` against a real
//! `berth node` on a real `berth runtime`: a hostNetwork busybox pod that
//! prints a few lines, then one more each time a file appears.
//!
//! Checked: /healthz on both ports; /pods lists the pod; /containerLogs
//! whole, tailed, and followed (a line printed later arrives); unknown pods
//! and containers are 404 with a message; /portForward reaches a listener
//! in the pod; /attach gets the container's new output; /metrics and
//! /metrics/cadvisor parse and name the pod; /stats/summary has the pod
//! (memory, processes) and its container;
//! `berth exec` prints the command's output and exits with its code;
//! `berth logs` and `berth pods` print the pod; a client trusting
//! `kubelet.crt` verifies the certificate under each of its names.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_integration::node::{Api, NODE, NodeTest, containers, root, wait_for};
use berth_integration::runtime::berth_binary;
use berth_proto::v1;
use http_body_util::BodyExt;

fn pod(image: &str, port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  hostNetwork: true
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "echo first; echo second; echo third; while true; do if [ -f /tmp/go ]; then echo later; rm /tmp/go; fi; sleep 0.2; done"]
  - name: listener
    image: {image}
    imagePullPolicy: IfNotPresent
    command: ["sh", "-c", "while true; do echo pong | nc -l -p {port}; done"]
"#
    )
}

/// `berth ARGS` against the node's API.
fn berth(port: u16, work: &Path, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(berth_binary()?);
    cmd.arg(args[0])
        .arg("--kubelet")
        .arg(format!("https://127.0.0.1:{port}"))
        .arg("--root")
        .arg(root(work))
        .args(&args[1..]);
    Ok(cmd.output()?)
}

/// Every sample line of a Prometheus/OpenMetrics text: `name{labels} value`.
fn samples(text: &str) -> Result<Vec<(String, f64)>> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .with_context(|| format!("metric line {line:?} has no value"))?;
        let v: f64 = value
            .parse()
            .with_context(|| format!("metric line {line:?}: value {value:?}"))?;
        out.push((series.to_owned(), v));
    }
    ensure!(!out.is_empty(), "no samples in:\n{text}");
    Ok(out)
}

#[test]
fn kubelet_api_and_cli() -> Result<()> {
    let t = NodeTest::start()?;
    let (work, log) = (t.work(), t.log());
    // Free now; taken by another process before the pod listens, only the
    // port-forward check would fail.
    let pf_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    t.write("web", &pod(t.image(), pf_port))?;
    let node = t.node()?;
    let name = format!("web-{NODE}");
    let port = node.1.api;

    t.runtime()?.block_on(async {
        let c = t.cri().await?;
        wait_for(
            "a running web container",
            Duration::from_secs(60),
            log,
            || async {
                Ok(containers(&c, "web")
                    .await?
                    .iter()
                    .any(|x| x.state == v1::ContainerState::ContainerRunning as i32))
            },
        )
        .await?;

        // The plain health port.
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", node.1.healthz)).await?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut plain = String::new();
        s.read_to_string(&mut plain).await?;
        ensure!(
            plain.starts_with("HTTP/1.1 200") && plain.ends_with("ok"),
            "{plain}"
        );

        let api = t.api(&node).await?;
        // Every name of the self-signed certificate verifies.
        for server_name in ["127.0.0.1", "localhost", NODE] {
            let r = api.get_as(server_name, "/healthz").await?;
            ensure!(
                r.status() == 200,
                "healthz as {server_name}: {}",
                r.status()
            );
        }

        let (st, body) = api.get("/pods").await?;
        ensure!(st == 200, "/pods: {st} {body}");
        let list: serde_json::Value = serde_json::from_str(&body)?;
        ensure!(
            list["kind"] == "PodList" && list["apiVersion"] == "v1",
            "{body}"
        );
        ensure!(
            list["items"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["metadata"]["name"] == name.as_str())),
            "{name} not in /pods: {body}"
        );

        let logs = format!("/containerLogs/default/{name}/main");
        wait_for(
            "the first lines in the log",
            Duration::from_secs(10),
            log,
            || async { Ok(api.get(&logs).await?.1.contains("third")) },
        )
        .await?;
        let (st, body) = api.get(&logs).await?;
        ensure!(
            st == 200 && body.starts_with("first\nsecond\nthird\n"),
            "{st} {body:?}"
        );
        let (_, body) = api.get(&format!("{logs}?tailLines=1")).await?;
        ensure!(body == "third\n", "tailLines=1: {body:?}");
        let (_, body) = api.get(&format!("{logs}?limitBytes=8")).await?;
        ensure!(body == "first\nse", "limitBytes=8: {body:?}");
        let (_, body) = api
            .get(&format!("{logs}?timestamps=true&tailLines=1"))
            .await?;
        ensure!(
            body.ends_with(" third\n")
                && body
                    .split(' ')
                    .next()
                    .is_some_and(|t| t.len() > 20 && t.ends_with('Z') && t.contains('T')),
            "timestamps: {body:?}"
        );

        for (path, what) in [
            (
                "/containerLogs/default/nope/main".to_owned(),
                "pod \"nope\" not found",
            ),
            (
                format!("/containerLogs/default/{name}/nope"),
                "container \"nope\" not found",
            ),
            (format!("/containerLogs/other/{name}/main"), "not found"),
        ] {
            let (st, body) = api.get(&path).await?;
            ensure!(st == 404 && body.contains(what), "{path}: {st} {body}");
        }

        // Follow: the history, then a line printed later.
        let resp = api
            .get_as("127.0.0.1", &format!("{logs}?follow=true&tailLines=1"))
            .await?;
        ensure!(resp.status() == 200, "follow: {}", resp.status());
        let mut body = resp.into_body();
        let mut seen = String::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut touched = false;
        while !seen.contains("later") {
            if Instant::now() > deadline {
                bail!("follow did not get the later line: {seen:?}");
            }
            if seen.contains("third") && !touched {
                let out = berth(port, work, &["exec", &name, "--", "touch", "/tmp/go"])?;
                ensure!(out.status.success(), "exec touch: {out:?}");
                touched = true;
            }
            match tokio::time::timeout(Duration::from_secs(5), body.frame()).await {
                Ok(Some(f)) => {
                    if let Ok(data) = f?.into_data() {
                        seen.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                Ok(None) => bail!("follow ended early: {seen:?}"),
                Err(_) => {}
            }
        }
        ensure!(
            seen.starts_with("third\n"),
            "follow with tailLines=1: {seen:?}"
        );
        drop(body);

        let (st, text) = api.get("/metrics").await?;
        ensure!(st == 200, "/metrics: {st}");
        let m = samples(&text)?;
        let value = |series: &str| m.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
        ensure!(value("kubelet_running_pods") == Some(1.0), "{text}");
        ensure!(
            value("kubelet_running_containers{container_state=\"running\"}") == Some(2.0),
            "{text}"
        );
        ensure!(
            value("kubelet_started_pods_total").is_some_and(|v| v >= 1.0),
            "{text}"
        );
        ensure!(
            m.iter().any(|(s, v)| s
                .starts_with("kubelet_runtime_operations_total{operation_type=\"run_podsandbox\"")
                && *v >= 1.0),
            "{text}"
        );
        ensure!(
            m.iter()
                .any(|(s, _)| s.starts_with("kubelet_runtime_operations_duration_seconds_bucket")),
            "{text}"
        );

        let (st, text) = api.get("/metrics/cadvisor").await?;
        ensure!(st == 200, "/metrics/cadvisor: {st}");
        let m = samples(&text)?;
        let ours = format!("pod=\"{name}\"");
        for metric in [
            "container_cpu_usage_seconds_total{",
            "container_memory_working_set_bytes{",
            "container_memory_usage_bytes{",
        ] {
            ensure!(
                m.iter().any(|(s, _)| s.starts_with(metric)
                    && s.contains(&ours)
                    && s.contains("container=\"main\"")
                    && s.contains("namespace=\"default\"")),
                "{metric} of {name}/main missing:\n{text}"
            );
        }

        // Port forwarding over the WebSocket channel protocol: the port on
        // the first message of channels 0 (data) and 1 (error), then the
        // listener's greeting.
        let mut pf = None;
        for _ in 0..50 {
            let url = format!(
                "wss://{}/portForward/default/{name}?port={pf_port}",
                api.authority()
            );
            let mut req =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    url.as_str(),
                )?;
            req.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                http::HeaderValue::from_static("v4.channel.k8s.io"),
            );
            let (mut ws, resp) =
                tokio_tungstenite::client_async(req, api.connect("127.0.0.1").await?).await?;
            ensure!(
                resp.headers()
                    .get("Sec-WebSocket-Protocol")
                    .is_some_and(|v| v == "v4.channel.k8s.io"),
                "portForward protocol: {resp:?}"
            );
            let mut data = Vec::new();
            let mut errors = Vec::new();
            use futures::StreamExt;
            while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                let m = m?;
                if let tokio_tungstenite::tungstenite::Message::Binary(b) = m {
                    match b.first() {
                        Some(0) => data.extend_from_slice(&b[1..]),
                        Some(1) => errors.extend_from_slice(&b[1..]),
                        _ => {}
                    }
                }
                if data.ends_with(b"pong\n") {
                    break;
                }
            }
            let prefix = pf_port.to_le_bytes();
            ensure!(
                data.starts_with(&prefix) && errors.starts_with(&prefix),
                "port prefixes: {data:?} {errors:?}"
            );
            if data[2..] == *b"pong\n" {
                pf = Some(());
                break;
            }
            // The listener may not be up yet: the error channel says so.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        ensure!(
            pf.is_some(),
            "no pong through portForward to port {pf_port}"
        );

        // Attach: the main container's output from now on, on channel 1.
        let url = format!(
            "wss://{}/attach/default/{name}/main?output=1&error=1",
            api.authority()
        );
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            http::HeaderValue::from_static("v5.channel.k8s.io"),
        );
        let (mut ws, _) =
            tokio_tungstenite::client_async(req, api.connect("127.0.0.1").await?).await?;
        let out = berth(port, work, &["exec", &name, "--", "touch", "/tmp/go"])?;
        ensure!(out.status.success(), "exec touch: {out:?}");
        let mut attached = Vec::new();
        {
            use futures::StreamExt;
            while !attached.ends_with(b"later\n") {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(m)) => {
                        if let tokio_tungstenite::tungstenite::Message::Binary(b) = m?
                            && b.first() == Some(&1)
                        {
                            attached.extend_from_slice(&b[1..]);
                        }
                    }
                    _ => bail!(
                        "attach: no later line: {:?}",
                        String::from_utf8_lossy(&attached)
                    ),
                }
            }
        }
        drop(ws);

        let (st, body) = api.get("/stats/summary").await?;
        ensure!(st == 200, "/stats/summary: {st} {body}");
        let s: serde_json::Value = serde_json::from_str(&body)?;
        ensure!(s["node"]["nodeName"] == NODE, "{body}");
        ensure!(
            s["node"]["memory"]["usageBytes"]
                .as_u64()
                .is_some_and(|v| v > 0),
            "{body}"
        );
        let p = s["pods"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["podRef"]["name"] == name.as_str()))
            .with_context(|| format!("{name} not in the summary: {body}"))?;
        ensure!(p["podRef"]["namespace"] == "default", "{body}");
        ensure!(
            p["memory"]["workingSetBytes"].is_u64(),
            "pod memory: {body}"
        );
        ensure!(
            p["process_stats"]["process_count"]
                .as_u64()
                .is_some_and(|n| n >= 2),
            "pod processes: {body}"
        );
        let main = p["containers"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["name"] == "main"))
            .with_context(|| format!("main not in the summary: {body}"))?;
        ensure!(main["memory"]["workingSetBytes"].is_u64(), "{body}");
        ensure!(
            main["logs"]["usedBytes"].as_u64().is_some_and(|v| v > 0),
            "{body}"
        );
        Ok::<_, anyhow::Error>(())
    })?;

    // The CLI.
    let out = berth(port, work, &["exec", &name, "--", "echo", "hi"])?;
    ensure!(
        out.status.code() == Some(0) && out.stdout == b"hi\n",
        "berth exec echo hi: {out:?}"
    );
    let out = berth(
        port,
        work,
        &[
            "exec",
            &name,
            "-c",
            "main",
            "--",
            "sh",
            "-c",
            "echo oops >&2; exit 3",
        ],
    )?;
    ensure!(out.status.code() == Some(3), "berth exec exit 3: {out:?}");
    ensure!(out.stderr == b"oops\n", "berth exec stderr: {out:?}");
    let mut child = Command::new(berth_binary()?)
        .args([
            "exec",
            "--kubelet",
            &format!("https://127.0.0.1:{port}"),
            "--root",
        ])
        .arg(root(work))
        .args(["-i", &name, "--", "sh", "-c", "cat; echo done"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(b"hello\nworld\n")?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success() && out.stdout == b"hello\nworld\ndone\n",
        "berth exec -i: {out:?}"
    );
    let out = berth(port, work, &["exec", "nope", "--", "true"])?;
    ensure!(
        out.status.code() == Some(1)
            && String::from_utf8_lossy(&out.stderr).contains("pod \"nope\" not found"),
        "berth exec on a missing pod: {out:?}"
    );
    let out = berth(port, work, &["logs", &name, "--tail", "2"])?;
    ensure!(out.status.success(), "berth logs: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(text.lines().count() == 2, "berth logs --tail 2: {text:?}");
    let out = berth(port, work, &["pods"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "berth pods: {out:?}");
    ensure!(
        text.starts_with("NAME ") && text.lines().nth(1).is_some_and(|l| l.starts_with(&name)),
        "berth pods: {text}"
    );
    let out = berth(port, work, &["pods", "-A"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.starts_with("NAMESPACE ") && text.contains(&format!("default     {name}")),
        "berth pods -A: {text}"
    );
    drop(node);
    Ok(())
}

/// A CA and a client certificate it signed (PEM: CA certificate, client
/// certificate, client key).
fn client_ca() -> Result<(String, String, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "test-client-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client.distinguished_name.push(DnType::CommonName, "admin");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = client.signed_by(&key, &ca_cert, &ca_key)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// With `--client-ca-file`, a client without a certificate gets 401 and one
/// with a certificate the CA signed gets in; the health port stays open.
#[test]
fn client_certificates_are_required_with_a_client_ca() -> Result<()> {
    let t = NodeTest::without_registry()?;
    let work = t.work();
    let (ca, cert, key) = client_ca()?;
    let ca_file = work.join("client-ca.crt");
    std::fs::write(&ca_file, ca)?;
    let ca_arg = ca_file.to_string_lossy().into_owned();
    let node = t.node_with(&["--client-ca-file", &ca_arg])?;
    t.runtime()?.block_on(async {
        let anonymous = t.api(&node).await?;
        let (st, body) = anonymous.get("/pods").await?;
        ensure!(st == 401, "anonymous /pods: {st} {body}");
        let admin = Api::with_client_cert(&node, work, &cert, &key)?;
        let (st, body) = admin.get("/pods").await?;
        ensure!(
            st == 200 && body.contains("PodList"),
            "/pods with a client certificate: {st} {body}"
        );
        let out = berth(node.1.api, work, &["pods"])?;
        ensure!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("401"),
            "berth pods without a certificate: {out:?}"
        );
        Ok::<_, anyhow::Error>(())
    })?;
    drop(node);
    Ok(())
}
