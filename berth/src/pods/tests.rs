use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use rstest::rstest;

use super::{default_container, exit_code, human_duration, pod_status, table};

fn pod(json: serde_json::Value) -> Pod {
    serde_json::from_value(json).unwrap()
}

fn now() -> jiff::Timestamp {
    "2024-01-02T03:00:00Z".parse().unwrap()
}

fn running(name: &str, ns: &str, restarts: i32) -> Pod {
    pod(serde_json::json!({
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": "2024-01-02T02:55:00Z"},
        "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "a", "ready": true, "restartCount": restarts, "image": "", "imageID": "",
             "state": {"running": {}}},
            {"name": "b", "ready": false, "restartCount": 1, "image": "", "imageID": "",
             "state": {"running": {}}}
        ]}
    }))
}

#[test]
fn the_table_is_kubectls() {
    let pods = [
        running("web-node1", "default", 2),
        running("dns", "kube-system", 0),
    ];
    assert_eq!(
        table(&pods, Some("default"), now()),
        "NAME        READY   STATUS    RESTARTS   AGE\n\
         web-node1   1/2     Running   3          5m\n"
    );
    assert_eq!(
        table(&pods, None, now()),
        "NAMESPACE     NAME        READY   STATUS    RESTARTS   AGE\n\
         default       web-node1   1/2     Running   3          5m\n\
         kube-system   dns         1/2     Running   1          5m\n"
    );
    assert_eq!(
        table(&pods, Some("other"), now()),
        "No resources found in other namespace.\n"
    );
    assert_eq!(table(&[], None, now()), "No resources found\n");
}

#[test]
fn a_pod_without_status_is_pending_of_unknown_age() {
    let p = pod(
        serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}}),
    );
    assert_eq!(
        table(&[p], Some("default"), now()),
        "NAME   READY   STATUS    RESTARTS   AGE\np      0/1     Pending   0          <unknown>\n"
    );
}

#[rstest]
#[case(serde_json::json!({"waiting": {"reason": "CrashLoopBackOff"}}), "CrashLoopBackOff")]
#[case(serde_json::json!({"terminated": {"exitCode": 1, "reason": "Error"}}), "Error")]
#[case(serde_json::json!({"terminated": {"exitCode": 2}}), "ExitCode:2")]
#[case(serde_json::json!({"terminated": {"exitCode": 137, "signal": 9}}), "Signal:9")]
#[case(serde_json::json!({"running": {}}), "Running")]
fn status_shows_what_holds_a_container(#[case] state: serde_json::Value, #[case] want: &str) {
    let p = pod(serde_json::json!({
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a"}]},
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "a", "ready": false, "restartCount": 0, "image": "", "imageID": "", "state": state}
        ]}
    }));
    assert_eq!(pod_status(&p), want);
}

#[test]
fn status_shows_init_progress_and_termination() {
    let mut p = pod(serde_json::json!({
        "metadata": {"name": "p"},
        "spec": {"initContainers": [{"name": "i"}, {"name": "j"}], "containers": [{"name": "a"}]},
        "status": {"phase": "Pending", "initContainerStatuses": [
            {"name": "i", "ready": true, "restartCount": 0, "image": "", "imageID": "",
             "state": {"terminated": {"exitCode": 0}}},
            {"name": "j", "ready": false, "restartCount": 0, "image": "", "imageID": "",
             "state": {"running": {}}}
        ]}
    }));
    assert_eq!(pod_status(&p), "Init:1/2");
    p.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    assert_eq!(pod_status(&p), "Terminating");
}

#[rstest]
#[case(5, "5s")]
#[case(119, "119s")]
#[case(330, "5m30s")]
#[case(600, "10m")]
#[case(4 * 3600 + 30 * 60, "4h30m")]
#[case(30 * 3600, "30h")]
#[case(3 * 86400 + 5 * 3600, "3d5h")]
#[case(300 * 86400, "300d")]
#[case(3 * 365 * 86400, "3y")]
fn ages_read_as_kubectls(#[case] secs: u64, #[case] want: &str) {
    assert_eq!(human_duration(Duration::from_secs(secs)), want);
}

#[test]
fn the_default_container_is_the_annotated_or_first() {
    let mut p = running("p", "default", 0);
    assert_eq!(default_container(&p).as_deref(), Some("a"));
    p.metadata.annotations = Some(
        [(
            "kubectl.kubernetes.io/default-container".to_owned(),
            "b".to_owned(),
        )]
        .into(),
    );
    assert_eq!(default_container(&p).as_deref(), Some("b"));
}

#[test]
fn exit_codes_come_from_the_status_channel() {
    assert_eq!(exit_code(b"").unwrap(), 0);
    assert_eq!(
        exit_code(br#"{"metadata":{},"status":"Success"}"#).unwrap(),
        0
    );
    let three = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;
    assert_eq!(exit_code(three).unwrap(), 3);
    let e = exit_code(br#"{"status":"Failure","message":"container not found"}"#).unwrap_err();
    assert_eq!(e.to_string(), "container not found");
    assert!(exit_code(b"not json").is_err());
}
