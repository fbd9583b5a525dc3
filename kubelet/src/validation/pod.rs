//! The checks of a static pod manifest, after upstream's `ValidatePodCreate`.
//!
//! A pragmatic subset: names and uniqueness, images, ports, restart and DNS
//! policies, volumes and their mounts, environment names, labels and
//! annotations. What it does not check (resources, probes, security
//! contexts, affinity ...) the runtime refuses later, or it does not matter
//! to a node without an API server. Values that upstream defaults before
//! validating (protocol `TCP`, restartPolicy `Always`, dnsPolicy
//! `ClusterFirst`) are accepted when absent. Two checks are berth's own:
//! a volume mount's `mountPath` must be absolute (the runtime would refuse it
//! anyway), and a container's `restartPolicy` is only checked against the
//! values the type has, not against upstream's feature-gated rules.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::field::{FieldError, FieldErrors, FieldPath};
use super::names;

/// Upstream's limit on the total size of a pod's annotations (keys and values).
const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

const RESTART_POLICIES: [&str; 3] = ["Always", "OnFailure", "Never"];
const PULL_POLICIES: [&str; 3] = ["Always", "IfNotPresent", "Never"];
const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];
const DNS_POLICIES: [&str; 4] = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const MOUNT_PROPAGATIONS: [&str; 3] = ["Bidirectional", "HostToContainer", "None"];
const HOST_PATH_TYPES: [&str; 8] = [
    "",
    "BlockDevice",
    "CharDevice",
    "Directory",
    "DirectoryOrCreate",
    "File",
    "FileOrCreate",
    "Socket",
];

/// Every problem of a pod as written in its manifest (before the node's name is appended).
pub fn validate_pod(pod: &Pod) -> FieldErrors {
    let mut errors = FieldErrors::default();
    validate_metadata(&pod.metadata, &FieldPath::new("metadata"), &mut errors);
    let empty = PodSpec::default();
    validate_spec(
        pod.spec.as_ref().unwrap_or(&empty),
        &FieldPath::new("spec"),
        &mut errors,
    );
    errors
}

fn validate_metadata(meta: &ObjectMeta, path: &FieldPath, errors: &mut FieldErrors) {
    let name_path = path.child("name");
    match meta.name.as_deref() {
        None | Some("") => errors.push(FieldError::required(
            &name_path,
            "name or generateName is required",
        )),
        Some(name) => errors.invalid_each(&name_path, name, names::dns1123_subdomain(name)),
    }
    // An empty namespace is defaulted to "default", as upstream's file source does.
    if let Some(namespace) = meta.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        errors.invalid_each(
            &path.child("namespace"),
            namespace,
            names::dns1123_label(namespace),
        );
    }
    if let Some(labels) = &meta.labels {
        let labels_path = path.child("labels");
        for (key, value) in labels {
            errors.invalid_each(&labels_path, key, names::qualified_name(key));
            errors.invalid_each(&labels_path, value, names::label_value(value));
        }
    }
    if let Some(annotations) = &meta.annotations {
        let annotations_path = path.child("annotations");
        let mut total = 0;
        for (key, value) in annotations {
            // Upstream: a qualified name, except that case does not matter.
            errors.invalid_each(
                &annotations_path,
                key,
                names::qualified_name(&key.to_lowercase()),
            );
            total += key.len() + value.len();
        }
        if total > ANNOTATIONS_MAX_BYTES {
            errors.push(FieldError::too_long(
                &annotations_path,
                ANNOTATIONS_MAX_BYTES,
            ));
        }
    }
}

fn validate_spec(spec: &PodSpec, path: &FieldPath, errors: &mut FieldErrors) {
    let volumes = validate_volumes(
        spec.volumes.as_deref().unwrap_or_default(),
        &path.child("volumes"),
        errors,
    );

    // Container names are unique across init and regular containers; init
    // containers come first, so a clash is reported on the regular one.
    let mut container_names = HashSet::new();
    let init_containers = spec.init_containers.as_deref().unwrap_or_default();
    let init_path = path.child("initContainers");
    for (i, container) in init_containers.iter().enumerate() {
        validate_container(
            container,
            &init_path.index(i),
            &volumes,
            &mut container_names,
            errors,
        );
    }
    let containers_path = path.child("containers");
    if spec.containers.is_empty() {
        errors.push(FieldError::required(&containers_path, ""));
    }
    for (i, container) in spec.containers.iter().enumerate() {
        validate_container(
            container,
            &containers_path.index(i),
            &volumes,
            &mut container_names,
            errors,
        );
    }
    validate_host_ports(&spec.containers, &containers_path, errors);
    if spec.host_network == Some(true) {
        validate_host_network_ports(&spec.containers, &containers_path, errors);
    }
    if spec
        .ephemeral_containers
        .as_ref()
        .is_some_and(|e| !e.is_empty())
    {
        errors.push(FieldError::forbidden(
            &path.child("ephemeralContainers"),
            "cannot be set on create",
        ));
    }

    if let Some(policy) = spec.restart_policy.as_deref().filter(|p| !p.is_empty())
        && !RESTART_POLICIES.contains(&policy)
    {
        errors.push(FieldError::not_supported(
            &path.child("restartPolicy"),
            policy,
            &RESTART_POLICIES,
        ));
    }
    if let Some(policy) = spec.dns_policy.as_deref().filter(|p| !p.is_empty()) {
        if !DNS_POLICIES.contains(&policy) {
            errors.push(FieldError::not_supported(
                &path.child("dnsPolicy"),
                policy,
                &DNS_POLICIES,
            ));
        } else if policy == "None" && spec.dns_config.is_none() {
            errors.push(FieldError::required(
                &path.child("dnsConfig"),
                "must provide `dnsConfig` when `dnsPolicy` is None",
            ));
        }
    }
    if let Some(seconds) = spec.active_deadline_seconds
        && !(1..=i64::from(i32::MAX)).contains(&seconds)
    {
        errors.push(FieldError::invalid(
            &path.child("activeDeadlineSeconds"),
            seconds,
            format!("must be between 1 and {}, inclusive", i32::MAX),
        ));
    }
    for (field, value) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            errors.invalid_each(&path.child(field), value, names::dns1123_label(value));
        }
    }
}

/// The volume sources a pod may name, under their JSON names, in the order
/// upstream checks them (so that "more than 1 volume type" names the same field).
fn volume_sources(volume: &Volume) -> [(&'static str, bool); 30] {
    [
        ("emptyDir", volume.empty_dir.is_some()),
        ("hostPath", volume.host_path.is_some()),
        ("gitRepo", volume.git_repo.is_some()),
        ("gcePersistentDisk", volume.gce_persistent_disk.is_some()),
        (
            "awsElasticBlockStore",
            volume.aws_elastic_block_store.is_some(),
        ),
        ("secret", volume.secret.is_some()),
        ("nfs", volume.nfs.is_some()),
        ("iscsi", volume.iscsi.is_some()),
        ("glusterfs", volume.glusterfs.is_some()),
        ("flocker", volume.flocker.is_some()),
        (
            "persistentVolumeClaim",
            volume.persistent_volume_claim.is_some(),
        ),
        ("rbd", volume.rbd.is_some()),
        ("quobyte", volume.quobyte.is_some()),
        ("cephfs", volume.cephfs.is_some()),
        ("cinder", volume.cinder.is_some()),
        ("flexVolume", volume.flex_volume.is_some()),
        ("downwardAPI", volume.downward_api.is_some()),
        ("fc", volume.fc.is_some()),
        ("azureFile", volume.azure_file.is_some()),
        ("vsphereVolume", volume.vsphere_volume.is_some()),
        (
            "photonPersistentDisk",
            volume.photon_persistent_disk.is_some(),
        ),
        ("portworxVolume", volume.portworx_volume.is_some()),
        ("azureDisk", volume.azure_disk.is_some()),
        ("storageos", volume.storageos.is_some()),
        ("configMap", volume.config_map.is_some()),
        ("scaleIO", volume.scale_io.is_some()),
        ("projected", volume.projected.is_some()),
        ("csi", volume.csi.is_some()),
        ("ephemeral", volume.ephemeral.is_some()),
        ("image", volume.image.is_some()),
    ]
}

/// Checks the volumes; returns the names of the valid ones, which mounts may
/// reference (as upstream, a mount of an invalid volume is also "Not found").
fn validate_volumes(
    volumes: &[Volume],
    path: &FieldPath,
    errors: &mut FieldErrors,
) -> HashSet<String> {
    let mut valid = HashSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let volume_path = path.index(i);
        let mut own = FieldErrors::default();
        let mut sources = 0;
        for (source, set) in volume_sources(volume) {
            if !set {
                continue;
            }
            if sources > 0 {
                own.push(FieldError::forbidden(
                    &volume_path.child(source),
                    "may not specify more than 1 volume type",
                ));
            } else {
                validate_volume_source(volume, source, &volume_path.child(source), &mut own);
            }
            sources += 1;
        }
        if sources == 0 {
            own.push(FieldError::required(
                &volume_path,
                "must specify a volume type",
            ));
        }
        let name_path = volume_path.child("name");
        if volume.name.is_empty() {
            own.push(FieldError::required(&name_path, ""));
        } else {
            own.invalid_each(&name_path, &volume.name, names::dns1123_label(&volume.name));
        }
        // As upstream, only a clash with a valid volume is a duplicate.
        if valid.contains(&volume.name) {
            own.push(FieldError::duplicate(&name_path, &volume.name));
        }
        if own.is_empty() {
            valid.insert(volume.name.clone());
        }
        errors.0.extend(own.0);
    }
    valid
}

fn validate_volume_source(
    volume: &Volume,
    source: &str,
    path: &FieldPath,
    errors: &mut FieldErrors,
) {
    match source {
        "hostPath" => {
            if let Some(host_path) = &volume.host_path {
                if host_path.path.is_empty() {
                    errors.push(FieldError::required(&path.child("path"), ""));
                } else {
                    no_backsteps(&host_path.path, &path.child("path"), errors);
                }
                if let Some(kind) = host_path.type_.as_deref()
                    && !HOST_PATH_TYPES.contains(&kind)
                {
                    errors.push(FieldError::not_supported(
                        &path.child("type"),
                        kind,
                        &HOST_PATH_TYPES,
                    ));
                }
            }
        }
        "configMap"
            if volume
                .config_map
                .as_ref()
                .is_some_and(|c| c.name.is_empty()) =>
        {
            errors.push(FieldError::required(&path.child("name"), ""));
        }
        "secret"
            if volume
                .secret
                .as_ref()
                .is_some_and(|s| s.secret_name.as_deref().unwrap_or_default().is_empty()) =>
        {
            errors.push(FieldError::required(&path.child("secretName"), ""));
        }
        _ => {}
    }
}

fn no_backsteps(value: &str, path: &FieldPath, errors: &mut FieldErrors) {
    if value.split('/').any(|part| part == "..") {
        errors.push(FieldError::invalid(path, value, "must not contain '..'"));
    }
}

fn validate_container(
    container: &Container,
    path: &FieldPath,
    volumes: &HashSet<String>,
    names_seen: &mut HashSet<String>,
    errors: &mut FieldErrors,
) {
    let name_path = path.child("name");
    if container.name.is_empty() {
        errors.push(FieldError::required(&name_path, ""));
    } else {
        errors.invalid_each(
            &name_path,
            &container.name,
            names::dns1123_label(&container.name),
        );
    }
    if !names_seen.insert(container.name.clone()) {
        errors.push(FieldError::duplicate(&name_path, &container.name));
    }

    let image_path = path.child("image");
    match container.image.as_deref() {
        None | Some("") => errors.push(FieldError::required(&image_path, "")),
        Some(image) if image.trim() != image => {
            errors.push(FieldError::invalid(
                &image_path,
                image,
                "must not have leading or trailing whitespace",
            ));
        }
        Some(_) => {}
    }
    if let Some(policy) = container
        .image_pull_policy
        .as_deref()
        .filter(|p| !p.is_empty())
        && !PULL_POLICIES.contains(&policy)
    {
        errors.push(FieldError::not_supported(
            &path.child("imagePullPolicy"),
            policy,
            &PULL_POLICIES,
        ));
    }
    if let Some(policy) = container.restart_policy.as_deref()
        && !RESTART_POLICIES.contains(&policy)
    {
        errors.push(FieldError::not_supported(
            &path.child("restartPolicy"),
            policy,
            &RESTART_POLICIES,
        ));
    }

    validate_ports(container, &path.child("ports"), errors);
    validate_env(container, &path.child("env"), errors);
    validate_mounts(container, &path.child("volumeMounts"), volumes, errors);
}

fn validate_ports(container: &Container, path: &FieldPath, errors: &mut FieldErrors) {
    let mut port_names = HashSet::new();
    for (i, port) in container
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let port_path = path.index(i);
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            let messages = names::port_name(name);
            if !messages.is_empty() {
                errors.invalid_each(&port_path.child("name"), name, messages);
            } else if !port_names.insert(name) {
                errors.push(FieldError::duplicate(&port_path.child("name"), name));
            }
        }
        let container_port = port_path.child("containerPort");
        if port.container_port == 0 {
            errors.push(FieldError::required(&container_port, ""));
        } else {
            for message in names::port_number(port.container_port) {
                errors.push(FieldError::invalid(
                    &container_port,
                    port.container_port,
                    message,
                ));
            }
        }
        if let Some(host_port) = port.host_port.filter(|&p| p != 0) {
            for message in names::port_number(host_port) {
                errors.push(FieldError::invalid(
                    &port_path.child("hostPort"),
                    host_port,
                    message,
                ));
            }
        }
        if let Some(protocol) = port.protocol.as_deref().filter(|p| !p.is_empty())
            && !PROTOCOLS.contains(&protocol)
        {
            errors.push(FieldError::not_supported(
                &port_path.child("protocol"),
                protocol,
                &PROTOCOLS,
            ));
        }
        if let Some(host_ip) = port.host_ip.as_deref().filter(|ip| !ip.is_empty())
            && host_ip.parse::<IpAddr>().is_err()
        {
            errors.push(FieldError::invalid(
                &port_path.child("hostIP"),
                host_ip,
                "must be a valid IP address",
            ));
        }
    }
}

/// A host port may be taken once per protocol and host IP, across the pod's containers.
fn validate_host_ports(containers: &[Container], path: &FieldPath, errors: &mut FieldErrors) {
    let mut taken = HashSet::new();
    for (ci, container) in containers.iter().enumerate() {
        for (pi, port) in container
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let Some(host_port) = port.host_port.filter(|&p| p != 0) else {
                continue;
            };
            let protocol = port
                .protocol
                .as_deref()
                .filter(|p| !p.is_empty())
                .unwrap_or("TCP");
            // Upstream's key, which is also what it prints.
            let key = format!(
                "{protocol}/{}/{host_port}",
                port.host_ip.as_deref().unwrap_or_default()
            );
            if !taken.insert(key.clone()) {
                let field = path.index(ci).child("ports").index(pi).child("hostPort");
                errors.push(FieldError::duplicate(&field, &key));
            }
        }
    }
}

/// In the host's network namespace a port cannot be remapped.
fn validate_host_network_ports(
    containers: &[Container],
    path: &FieldPath,
    errors: &mut FieldErrors,
) {
    for (ci, container) in containers.iter().enumerate() {
        for (pi, port) in container
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            // Upstream defaults an absent hostPort to the containerPort here.
            if let Some(host_port) = port.host_port.filter(|&p| p != 0)
                && host_port != port.container_port
            {
                let field = path
                    .index(ci)
                    .child("ports")
                    .index(pi)
                    .child("containerPort");
                errors.push(FieldError::invalid(
                    &field,
                    port.container_port,
                    "must match `hostPort` when `hostNetwork` is true",
                ));
            }
        }
    }
}

fn validate_env(container: &Container, path: &FieldPath, errors: &mut FieldErrors) {
    for (i, var) in container
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let var_path = path.index(i);
        if var.name.is_empty() {
            errors.push(FieldError::required(&var_path.child("name"), ""));
        } else if !var
            .name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
        {
            // Upstream's relaxed rule (the default since 1.32).
            errors.push(FieldError::invalid(
                &var_path.child("name"),
                &var.name,
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
        if var.value_from.is_some() && var.value.as_deref().is_some_and(|v| !v.is_empty()) {
            errors.push(FieldError::invalid(
                &var_path.child("valueFrom"),
                "",
                "may not be specified when `value` is not empty",
            ));
        }
    }
}

fn validate_mounts(
    container: &Container,
    path: &FieldPath,
    volumes: &HashSet<String>,
    errors: &mut FieldErrors,
) {
    let privileged = container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        .unwrap_or(false);
    let mut mount_paths: HashMap<&str, usize> = HashMap::new();
    for (i, mount) in container
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let mount_path = path.index(i);
        let name_path = mount_path.child("name");
        if mount.name.is_empty() {
            errors.push(FieldError::required(&name_path, ""));
        }
        if !volumes.contains(&mount.name) {
            errors.push(FieldError::not_found(&name_path, &mount.name));
        }
        let target_path = mount_path.child("mountPath");
        if mount.mount_path.is_empty() {
            errors.push(FieldError::required(&target_path, ""));
        } else if !mount.mount_path.starts_with('/') {
            errors.push(FieldError::invalid(
                &target_path,
                &mount.mount_path,
                "must be an absolute path",
            ));
        }
        if mount_paths.insert(&mount.mount_path, i).is_some() {
            errors.push(FieldError::invalid(
                &target_path,
                &mount.mount_path,
                "must be unique",
            ));
        }
        if let Some(sub_path) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            let sub_path_field = mount_path.child("subPath");
            if sub_path.starts_with('/') {
                errors.push(FieldError::invalid(
                    &sub_path_field,
                    sub_path,
                    "must be a relative path",
                ));
            }
            no_backsteps(sub_path, &sub_path_field, errors);
        }
        if let Some(propagation) = mount.mount_propagation.as_deref() {
            let field = mount_path.child("mountPropagation");
            if !MOUNT_PROPAGATIONS.contains(&propagation) {
                errors.push(FieldError::not_supported(
                    &field,
                    propagation,
                    &MOUNT_PROPAGATIONS,
                ));
            }
            if propagation == "Bidirectional" && !privileged {
                errors.push(FieldError::forbidden(
                    &field,
                    "Bidirectional mount propagation is available only to privileged containers",
                ));
            }
        }
    }
}
