//! Checks the compiled CRI descriptors against facts of the upstream API that
//! a kubelet, crictl or critest depends on: every RPC by name, and the field
//! numbers that decide what goes on the wire.

use berth_proto::v1;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

const RUNTIME_RPCS: &[&str] = &[
    "Version",
    "RunPodSandbox",
    "StopPodSandbox",
    "RemovePodSandbox",
    "PodSandboxStatus",
    "ListPodSandbox",
    "StreamPodSandboxes",
    "CreateContainer",
    "StartContainer",
    "StopContainer",
    "RemoveContainer",
    "ListContainers",
    "StreamContainers",
    "ContainerStatus",
    "UpdateContainerResources",
    "ReopenContainerLog",
    "ExecSync",
    "Exec",
    "Attach",
    "PortForward",
    "ContainerStats",
    "ListContainerStats",
    "StreamContainerStats",
    "PodSandboxStats",
    "ListPodSandboxStats",
    "StreamPodSandboxStats",
    "UpdateRuntimeConfig",
    "Status",
    "CheckpointContainer",
    "CheckpointPod",
    "RestorePod",
    "GetContainerEvents",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "StreamPodSandboxMetrics",
    "RuntimeConfig",
    "UpdatePodSandboxResources",
];

const IMAGE_RPCS: &[&str] = &[
    "ListImages",
    "StreamImages",
    "ImageStatus",
    "PullImage",
    "RemoveImage",
    "ImageFsInfo",
];

/// RPCs whose answers are server streams.
const STREAMING_RPCS: &[&str] = &[
    "StreamPodSandboxes",
    "StreamContainers",
    "StreamContainerStats",
    "StreamPodSandboxStats",
    "GetContainerEvents",
    "StreamPodSandboxMetrics",
    "StreamImages",
];

fn cri_file() -> FileDescriptorProto {
    let set = FileDescriptorSet::decode(berth_proto::FILE_DESCRIPTOR_SET)
        .expect("the build script wrote a valid descriptor set");
    set.file
        .into_iter()
        .find(|f| f.package() == "runtime.v1")
        .expect("runtime.v1 is in the descriptor set")
}

fn message<'a>(file: &'a FileDescriptorProto, name: &str) -> &'a DescriptorProto {
    file.message_type
        .iter()
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("message {name} is missing"))
}

/// Asserts the number, type and label of `message.field`; `type_name` is
/// the message or enum type for message and enum fields.
fn assert_field(
    file: &FileDescriptorProto,
    msg: &str,
    field: &str,
    number: i32,
    ty: Type,
    label: Label,
    type_name: Option<&str>,
) {
    let f = message(file, msg)
        .field
        .iter()
        .find(|f| f.name() == field)
        .unwrap_or_else(|| panic!("field {msg}.{field} is missing"));
    assert_eq!(f.number(), number, "{msg}.{field} number");
    assert_eq!(f.r#type(), ty, "{msg}.{field} type");
    assert_eq!(f.label(), label, "{msg}.{field} label");
    if let Some(t) = type_name {
        assert_eq!(
            f.type_name(),
            format!(".runtime.v1.{t}"),
            "{msg}.{field} type name"
        );
    }
}

#[test]
fn services_have_every_upstream_rpc_in_order() {
    let file = cri_file();
    let names: Vec<&str> = file.service.iter().map(|s| s.name()).collect();
    assert_eq!(names, ["RuntimeService", "ImageService"]);
    for (service, want) in [
        ("RuntimeService", RUNTIME_RPCS),
        ("ImageService", IMAGE_RPCS),
    ] {
        let s = file.service.iter().find(|s| s.name() == service).unwrap();
        let got: Vec<&str> = s.method.iter().map(|m| m.name()).collect();
        assert_eq!(got, want, "{service} RPCs");
        for m in &s.method {
            let streaming = STREAMING_RPCS.contains(&m.name());
            assert_eq!(
                m.server_streaming(),
                streaming,
                "{service}.{} server streaming",
                m.name()
            );
            assert!(
                !m.client_streaming(),
                "{service}.{} is not client streaming",
                m.name()
            );
        }
    }
}

#[test]
fn rpc_messages_match_upstream() {
    let file = cri_file();
    let rt = file
        .service
        .iter()
        .find(|s| s.name() == "RuntimeService")
        .unwrap();
    let events = rt
        .method
        .iter()
        .find(|m| m.name() == "GetContainerEvents")
        .unwrap();
    assert_eq!(events.input_type(), ".runtime.v1.GetEventsRequest");
    assert_eq!(events.output_type(), ".runtime.v1.ContainerEventResponse");
    let config = rt
        .method
        .iter()
        .find(|m| m.name() == "RuntimeConfig")
        .unwrap();
    assert_eq!(config.input_type(), ".runtime.v1.RuntimeConfigRequest");
    assert_eq!(config.output_type(), ".runtime.v1.RuntimeConfigResponse");
}

#[test]
fn wire_field_numbers_match_upstream() {
    use Label::{Optional as One, Repeated};
    use Type::{Bool, Bytes, Enum, Int64, Message as Msg, String};
    let f = cri_file();

    assert_field(
        &f,
        "RunPodSandboxRequest",
        "config",
        1,
        Msg,
        One,
        Some("PodSandboxConfig"),
    );
    assert_field(
        &f,
        "RunPodSandboxRequest",
        "runtime_handler",
        2,
        String,
        One,
        None,
    );
    assert_field(
        &f,
        "PodSandboxConfig",
        "metadata",
        1,
        Msg,
        One,
        Some("PodSandboxMetadata"),
    );
    assert_field(
        &f,
        "PodSandboxConfig",
        "log_directory",
        3,
        String,
        One,
        None,
    );
    assert_field(
        &f,
        "PodSandboxConfig",
        "port_mappings",
        5,
        Msg,
        Repeated,
        Some("PortMapping"),
    );
    assert_field(
        &f,
        "PodSandboxConfig",
        "linux",
        8,
        Msg,
        One,
        Some("LinuxPodSandboxConfig"),
    );
    assert_field(
        &f,
        "LinuxPodSandboxConfig",
        "cgroup_parent",
        1,
        String,
        One,
        None,
    );

    assert_field(
        &f,
        "ContainerConfig",
        "metadata",
        1,
        Msg,
        One,
        Some("ContainerMetadata"),
    );
    assert_field(
        &f,
        "ContainerConfig",
        "image",
        2,
        Msg,
        One,
        Some("ImageSpec"),
    );
    assert_field(&f, "ContainerConfig", "command", 3, String, Repeated, None);
    assert_field(&f, "ContainerConfig", "args", 4, String, Repeated, None);
    assert_field(&f, "ContainerConfig", "log_path", 11, String, One, None);
    assert_field(&f, "ContainerConfig", "stdin_once", 13, Bool, One, None);
    assert_field(
        &f,
        "ContainerConfig",
        "linux",
        15,
        Msg,
        One,
        Some("LinuxContainerConfig"),
    );

    let sc = "LinuxContainerSecurityContext";
    assert_field(&f, sc, "capabilities", 1, Msg, One, Some("Capability"));
    assert_field(&f, sc, "privileged", 2, Bool, One, None);
    assert_field(
        &f,
        sc,
        "namespace_options",
        3,
        Msg,
        One,
        Some("NamespaceOption"),
    );
    assert_field(&f, sc, "run_as_user", 5, Msg, One, Some("Int64Value"));
    assert_field(&f, sc, "readonly_rootfs", 7, Bool, One, None);
    assert_field(&f, sc, "supplemental_groups", 8, Int64, Repeated, None);
    assert_field(&f, sc, "no_new_privs", 11, Bool, One, None);
    assert_field(&f, sc, "run_as_group", 12, Msg, One, Some("Int64Value"));
    assert_field(&f, sc, "masked_paths", 13, String, Repeated, None);
    assert_field(&f, sc, "readonly_paths", 14, String, Repeated, None);
    assert_field(&f, sc, "seccomp", 15, Msg, One, Some("SecurityProfile"));
    assert_field(
        &f,
        sc,
        "supplemental_groups_policy",
        17,
        Enum,
        One,
        Some("SupplementalGroupsPolicy"),
    );

    assert_field(
        &f,
        "RuntimeConfigResponse",
        "linux",
        1,
        Msg,
        One,
        Some("LinuxRuntimeConfiguration"),
    );
    assert_field(
        &f,
        "LinuxRuntimeConfiguration",
        "cgroup_driver",
        1,
        Enum,
        One,
        Some("CgroupDriver"),
    );
    assert_field(
        &f,
        "UpdateRuntimeConfigRequest",
        "runtime_config",
        1,
        Msg,
        One,
        Some("RuntimeConfig"),
    );
    assert_field(&f, "NetworkConfig", "pod_cidr", 1, String, One, None);
    assert_field(&f, "ExecSyncResponse", "stdout", 1, Bytes, One, None);
    assert_field(
        &f,
        "ExecSyncResponse",
        "exit_code",
        3,
        Type::Int32,
        One,
        None,
    );

    let driver = f
        .enum_type
        .iter()
        .find(|e| e.name() == "CgroupDriver")
        .unwrap();
    let values: Vec<(&str, i32)> = driver
        .value
        .iter()
        .map(|v| (v.name(), v.number()))
        .collect();
    assert_eq!(values, [("SYSTEMD", 0), ("CGROUPFS", 1)]);
    assert_eq!(v1::CgroupDriver::Cgroupfs as i32, 1);
}

#[test]
fn run_pod_sandbox_request_round_trips() {
    let req = v1::RunPodSandboxRequest {
        config: Some(v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: "web".into(),
                uid: "0b7e5c1a".into(),
                namespace: "default".into(),
                attempt: 2,
            }),
            hostname: "web".into(),
            log_directory: "/var/log/pods/default_web_0b7e5c1a".into(),
            dns_config: Some(v1::DnsConfig {
                servers: vec!["10.96.0.10".into()],
                searches: vec!["default.svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
            }),
            port_mappings: vec![v1::PortMapping {
                protocol: v1::Protocol::Udp.into(),
                container_port: 53,
                host_port: 5353,
                host_ip: "127.0.0.1".into(),
            }],
            labels: [("app".to_string(), "web".to_string())].into(),
            linux: Some(v1::LinuxPodSandboxConfig {
                cgroup_parent: "kubepods-besteffort.slice".into(),
                sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        runtime_handler: "runc".into(),
    };
    let bytes = req.encode_to_vec();
    // Field 1 (config), wire type 2 (length-delimited) opens the message.
    assert_eq!(bytes[0], (1 << 3) | 2);
    let back = v1::RunPodSandboxRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(back, req);
}
