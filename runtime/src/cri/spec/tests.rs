use super::*;

fn image() -> RunConfig {
    RunConfig {
        user: None,
        env: vec!["PATH=/bin".into(), "A=image".into(), "B=image".into()],
        entrypoint: vec!["/entry".into()],
        cmd: vec!["default-arg".into()],
        working_dir: Some("/srv".into()),
        ..Default::default()
    }
}

fn config() -> v1::ContainerConfig {
    v1::ContainerConfig {
        metadata: Some(v1::ContainerMetadata {
            name: "c".into(),
            attempt: 0,
        }),
        ..Default::default()
    }
}

fn pod() -> PodView {
    PodView {
        netns: Some("/run/berth/pods/p/ns/net".into()),
        ipc_ns: Some("/run/berth/pods/p/ns/ipc".into()),
        uts_ns: Some("/run/berth/pods/p/ns/uts".into()),
        hostname: Some("/var/lib/berth/pods/p/hostname".into()),
        shm: Some("/run/berth/pods/p/shm".into()),
        cgroup_parent: "/kubepods/besteffort/pod1".into(),
        ..Default::default()
    }
}

fn build_with(config: &v1::ContainerConfig, pod: &PodView) -> Result<Value, SpecError> {
    let image = image();
    build(&SpecInput {
        id: "abc",
        config,
        image: &image,
        rootfs: Path::new("/rootfs"),
        pod,
        passwd: "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/:/bin/false\n",
        group: "root:x:0:\nwww:x:34:\nextra:x:99:www\n",
        devices: Vec::new(),
        host_devices: Vec::new(),
        seccomp_profile: None,
        target_pid: None,
    })
}

#[test]
fn args_merge_as_docker_defines() {
    let img = image();
    let mut c = config();
    assert_eq!(argv(&c, &img).unwrap(), ["/entry", "default-arg"]);
    c.args = vec!["x".into()];
    assert_eq!(argv(&c, &img).unwrap(), ["/entry", "x"]);
    c.command = vec!["/cmd".into()];
    assert_eq!(argv(&c, &img).unwrap(), ["/cmd", "x"]);
    c.args.clear();
    assert_eq!(argv(&c, &img).unwrap(), ["/cmd"]);
    let e = argv(&config(), &RunConfig::default()).unwrap_err();
    assert!(e.to_string().contains("no command"), "{e}");
}

#[test]
fn request_env_replaces_image_env_in_place() {
    let mut c = config();
    c.envs = vec![
        v1::KeyValue {
            key: "B".into(),
            value: b"req".to_vec(),
        },
        v1::KeyValue {
            key: "C".into(),
            value: b"x=y".to_vec(),
        },
    ];
    assert_eq!(
        env(&c, &image()),
        ["PATH=/bin", "A=image", "B=req", "C=x=y"]
    );
    assert!(env(&config(), &RunConfig::default())[0].starts_with("PATH=/usr/local/sbin"));
}

#[test]
fn the_pod_namespaces_and_files_are_joined() {
    let s = build_with(&config(), &pod()).unwrap();
    let ns = s["linux"]["namespaces"].as_array().unwrap();
    assert!(ns.contains(&json!({"type": "network", "path": "/run/berth/pods/p/ns/net"})));
    assert!(ns.contains(&json!({"type": "pid"})));
    assert!(ns.contains(&json!({"type": "mount"})));
    assert_eq!(s["linux"]["cgroupsPath"], "/kubepods/besteffort/pod1/abc");
    assert_eq!(s["process"]["cwd"], "/srv");
    let mounts = s["mounts"].as_array().unwrap();
    let hostname = mounts
        .iter()
        .find(|m| m["destination"] == "/etc/hostname")
        .unwrap();
    assert_eq!(hostname["source"], "/var/lib/berth/pods/p/hostname");
    let shm = mounts
        .iter()
        .find(|m| m["destination"] == "/dev/shm")
        .unwrap();
    assert_eq!(shm["type"], "bind");
    // What is built parses as an OCI spec.
    let _: oci_spec::runtime::Spec = serde_json::from_value(s).unwrap();
}

#[test]
fn host_pid_and_a_shared_pid_namespace() {
    let mut c = config();
    c.linux = Some(v1::LinuxContainerConfig {
        security_context: Some(v1::LinuxContainerSecurityContext {
            namespace_options: Some(v1::NamespaceOption {
                pid: v1::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let s = build_with(&c, &pod()).unwrap();
    assert!(
        !s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "pid")
    );
    let mut p = pod();
    p.pid_ns = Some("/proc/42/ns/pid".into());
    let s = build_with(&config(), &p).unwrap();
    assert!(
        s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .contains(&json!({"type": "pid", "path": "/proc/42/ns/pid"}))
    );
}

#[test]
fn capabilities_add_and_drop() {
    let mut c = config();
    c.linux = Some(v1::LinuxContainerConfig {
        security_context: Some(v1::LinuxContainerSecurityContext {
            capabilities: Some(v1::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["CAP_CHOWN".into(), "kill".into()],
                add_ambient_capabilities: vec![],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let s = build_with(&c, &pod()).unwrap();
    let caps: Vec<&str> = s["process"]["capabilities"]["bounding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(caps.contains(&"CAP_NET_ADMIN"));
    assert!(!caps.contains(&"CAP_CHOWN"));
    assert!(!caps.contains(&"CAP_KILL"));
    assert!(caps.contains(&"CAP_SETUID"));

    let mut bad = c.clone();
    if let Some(sc) = bad.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.capabilities.as_mut().unwrap().add_capabilities = vec!["FLY".into()];
    }
    let e = build_with(&bad, &pod()).unwrap_err();
    assert!(e.to_string().contains("FLY"), "{e}");
}

#[test]
fn drop_all_then_add_one() {
    let mut c = config();
    c.linux = Some(v1::LinuxContainerConfig {
        security_context: Some(v1::LinuxContainerSecurityContext {
            capabilities: Some(v1::Capability {
                add_capabilities: vec!["NET_BIND_SERVICE".into()],
                drop_capabilities: vec!["ALL".into()],
                add_ambient_capabilities: vec![],
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let s = build_with(&c, &pod()).unwrap();
    assert_eq!(
        s["process"]["capabilities"]["effective"],
        json!(["CAP_NET_BIND_SERVICE"])
    );
}

#[test]
fn privileged_gets_everything_and_no_masks() {
    let mut c = config();
    c.linux = Some(v1::LinuxContainerConfig {
        security_context: Some(v1::LinuxContainerSecurityContext {
            privileged: true,
            seccomp: Some(v1::SecurityProfile {
                profile_type: v1::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let s = build_with(&c, &pod()).unwrap();
    assert_eq!(s["linux"]["maskedPaths"], json!([]));
    assert!(s["linux"].get("seccomp").is_none());
    assert_eq!(
        s["linux"]["resources"]["devices"],
        json!([{"allow": true, "access": "rwm"}])
    );
    assert!(
        s["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .len()
            > 30
    );
}

#[test]
fn runtime_default_seccomp_and_default_masks() {
    let mut c = config();
    c.linux = Some(v1::LinuxContainerConfig {
        security_context: Some(v1::LinuxContainerSecurityContext {
            seccomp: Some(v1::SecurityProfile {
                profile_type: v1::security_profile::ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let s = build_with(&c, &pod()).unwrap();
    assert_eq!(s["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    assert!(
        s["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&json!("/proc/kcore"))
    );
    let s = build_with(&config(), &pod()).unwrap();
    assert!(
        s["linux"].get("seccomp").is_none(),
        "no profile means unconfined"
    );
}

#[test]
fn request_mounts_with_propagation() {
    let mut c = config();
    c.mounts = vec![
        v1::Mount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            readonly: true,
            propagation: v1::MountPropagation::PropagationHostToContainer as i32,
            ..Default::default()
        },
        v1::Mount {
            container_path: "/etc/hosts".into(),
            host_path: "/var/lib/kubelet/pods/x/etc-hosts".into(),
            ..Default::default()
        },
    ];
    let s = build_with(&c, &pod()).unwrap();
    let mounts = s["mounts"].as_array().unwrap();
    let data = mounts.iter().find(|m| m["destination"] == "/data").unwrap();
    assert_eq!(data["options"], json!(["rbind", "rslave", "ro"]));
    assert_eq!(s["linux"]["rootfsPropagation"], "rslave");
    let hosts: Vec<_> = mounts
        .iter()
        .filter(|m| m["destination"] == "/etc/hosts")
        .collect();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0]["source"], "/var/lib/kubelet/pods/x/etc-hosts");

    c.mounts[0].container_path = "data".into();
    let e = build_with(&c, &pod()).unwrap_err();
    assert!(e.to_string().contains("mounts[0].container_path"), "{e}");
}

#[test]
fn user_and_resources() {
    let mut c = config();
    c.linux = Some(v1::LinuxContainerConfig {
        resources: Some(v1::LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50000,
            cpu_period: 100000,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 999,
            ..Default::default()
        }),
        security_context: Some(v1::LinuxContainerSecurityContext {
            run_as_username: "www".into(),
            ..Default::default()
        }),
    });
    let s = build_with(&c, &pod()).unwrap();
    assert_eq!(
        s["process"]["user"],
        json!({"uid": 33, "gid": 34, "additionalGids": [99]})
    );
    assert_eq!(s["process"]["oomScoreAdj"], 999);
    assert_eq!(
        s["linux"]["resources"]["cpu"],
        json!({"shares": 512, "quota": 50000, "period": 100000})
    );
    assert_eq!(s["linux"]["resources"]["memory"]["limit"], 64 << 20);
}

#[test]
fn systemd_cgroup_paths() {
    let mut p = pod();
    p.systemd_cgroup = true;
    p.cgroup_parent = "kubepods-besteffort-pod1.slice".into();
    assert_eq!(
        cgroups_path(&p, "abc"),
        "kubepods-besteffort-pod1.slice:cri-berth:abc"
    );
}
