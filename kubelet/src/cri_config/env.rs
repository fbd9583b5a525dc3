//! A container's environment and `$(VAR)` expansion, as upstream's
//! `makeEnvironmentVariables` and `expansion` package do them.
//!
//! Variables are resolved in declaration order: a `value` may refer to the
//! variables declared before it and to the service variables; a reference to
//! anything else stays as written, and `$$` is a literal `$`. A name declared
//! twice keeps its first place and its last value. Service variables not
//! shadowed by the container follow, in name order.
//!
//! `envFrom` and `valueFrom.configMapKeyRef`/`secretKeyRef` are refused with
//! [`EnvError::NeedsApiServer`]: static pods have no API server to read
//! them from, and upstream's kubelet without a client fails those pods too
//! (even for `optional` references) rather than start them without their
//! configuration.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, ObjectFieldSelector, Pod, ResourceFieldSelector};
use thiserror::Error;

use super::downward::{DownwardError, format_map};
use super::quantity::QuantityError;
use super::resources::{Requirements, ResourcesError};
use super::{NodeContext, PodContext};

/// Errors of this module.
#[derive(Debug, Error)]
pub enum EnvError {
    /// A reference to a ConfigMap or Secret.
    #[error(
        "container {container:?}: {field} refers to {kind} {name:?}, which needs the API server; static pods cannot use it"
    )]
    NeedsApiServer {
        /// The container's name.
        container: String,
        /// Where the reference is (`envFrom[0]`, `env[FOO]`).
        field: String,
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// The object's name.
        name: String,
    },
    /// A `valueFrom` with no source the kubelet knows.
    #[error("container {container:?}: env[{var}]: valueFrom has no supported source")]
    NoSource {
        /// The container's name.
        container: String,
        /// The variable.
        var: String,
    },
    /// A `fieldRef` path the downward API does not offer.
    #[error("container {container:?}: env[{var}]: unsupported fieldPath {path:?}")]
    FieldPath {
        /// The container's name.
        container: String,
        /// The variable.
        var: String,
        /// The path as written.
        path: String,
    },
    /// A `resourceFieldRef` resource the downward API does not offer.
    #[error("container {container:?}: env[{var}]: unsupported resource {resource:?}")]
    Resource {
        /// The container's name.
        container: String,
        /// The variable.
        var: String,
        /// The resource as written.
        resource: String,
    },
    /// A `resourceFieldRef` naming a container the pod does not have.
    #[error("container {container:?}: env[{var}]: no container named {target:?} in the pod")]
    NoSuchContainer {
        /// The container's name.
        container: String,
        /// The variable.
        var: String,
        /// The name asked for.
        target: String,
    },
    /// A divisor that is not a quantity, or rounds to nothing.
    #[error("container {container:?}: env[{var}]: divisor {divisor:?} is not usable")]
    Divisor {
        /// The container's name.
        container: String,
        /// The variable.
        var: String,
        /// The divisor as written.
        divisor: String,
        /// Why, when it does not parse.
        source: Option<QuantityError>,
    },
    /// The resources of the container the reference reads.
    #[error(transparent)]
    Resources(#[from] ResourcesError),
}

/// Expands `$(NAME)` in `input` with `lookup`; unknown names stay as written,
/// `$$` becomes `$`, and any other `$` is kept.
pub fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut copied = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        out.push_str(&input[copied..i]);
        match bytes[i + 1] {
            b'$' => {
                out.push('$');
                i += 2;
            }
            b'(' => match input[i + 2..].find(')') {
                Some(len) => {
                    let name = &input[i + 2..i + 2 + len];
                    match lookup(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    i += 2 + len + 1;
                }
                // Unterminated: the text stays, scanning goes on after `$(`.
                None => {
                    out.push_str("$(");
                    i += 2;
                }
            },
            // Not an expression: the `$` stays, the next character is read again.
            _ => {
                out.push('$');
                i += 1;
            }
        }
        copied = i;
    }
    out.push_str(&input[copied..]);
    out
}

/// The environment of `container` in the pod of `ctx`, in order.
pub fn container_env(
    ctx: &PodContext<'_>,
    node: &NodeContext,
    container: &Container,
) -> Result<Vec<(String, String)>, EnvError> {
    let name = &container.name;
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();

    for (i, from) in container.env_from.iter().flatten().enumerate() {
        let (kind, reference) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(c), _) => ("ConfigMap", c.name.clone()),
            (None, Some(s)) => ("Secret", s.name.clone()),
            (None, None) => continue,
        };
        return Err(EnvError::NeedsApiServer {
            container: name.clone(),
            field: format!("envFrom[{i}]"),
            kind,
            name: reference,
        });
    }

    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(v), _) if !v.is_empty() => expand(v, |n| {
                values
                    .get(n)
                    .or_else(|| ctx.service_env.get(n))
                    .map(String::as_str)
            }),
            (_, Some(from)) => {
                let needs_api = |kind, reference: &str| EnvError::NeedsApiServer {
                    container: name.clone(),
                    field: format!("env[{}]", var.name),
                    kind,
                    name: reference.to_owned(),
                };
                if let Some(field) = &from.field_ref {
                    field_value(ctx, node, field).ok_or_else(|| EnvError::FieldPath {
                        container: name.clone(),
                        var: var.name.clone(),
                        path: field.field_path.clone(),
                    })?
                } else if let Some(resource) = &from.resource_field_ref {
                    resource_value(ctx, node, container, &var.name, resource)?
                } else if let Some(key) = &from.config_map_key_ref {
                    return Err(needs_api("ConfigMap", &key.name));
                } else if let Some(key) = &from.secret_key_ref {
                    return Err(needs_api("Secret", &key.name));
                } else {
                    return Err(EnvError::NoSource {
                        container: name.clone(),
                        var: var.name.clone(),
                    });
                }
            }
            _ => String::new(),
        };
        if values.insert(var.name.clone(), value).is_none() {
            order.push(var.name.clone());
        }
    }

    let mut env: Vec<(String, String)> = order
        .into_iter()
        .map(|k| {
            let v = values.remove(&k).unwrap_or_default();
            (k, v)
        })
        .collect();
    let declared: std::collections::BTreeSet<&str> = container
        .env
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    for (k, v) in &ctx.service_env {
        if !declared.contains(k.as_str()) {
            env.push((k.clone(), v.clone()));
        }
    }
    Ok(env)
}

/// The value of a downward API `fieldRef`, `None` for a path it does not offer.
fn field_value(
    ctx: &PodContext<'_>,
    node: &NodeContext,
    field: &ObjectFieldSelector,
) -> Option<String> {
    let pod: &Pod = ctx.pod;
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let join = |ips: &[std::net::IpAddr]| {
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let path = field.field_path.as_str();
    let text = |s: &Option<String>| s.clone().unwrap_or_default();
    Some(match path {
        "metadata.name" => text(&meta.name),
        "metadata.namespace" => text(&meta.namespace),
        "metadata.uid" => text(&meta.uid),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| node.node_name.clone()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" => node
            .host_ips
            .first()
            .map(ToString::to_string)
            .unwrap_or_default(),
        "status.hostIPs" => join(&node.host_ips),
        "status.podIP" => ctx
            .pod_ips
            .first()
            .map(ToString::to_string)
            .unwrap_or_default(),
        "status.podIPs" => join(&ctx.pod_ips),
        _ => {
            let (map, key) = subscript(path, "metadata.labels")
                .map(|k| (meta.labels.as_ref(), k))
                .or_else(|| {
                    subscript(path, "metadata.annotations").map(|k| (meta.annotations.as_ref(), k))
                })?;
            map.and_then(|m| m.get(key)).cloned().unwrap_or_default()
        }
    })
}

/// The key of `prefix['key']`.
fn subscript<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    path.strip_prefix(prefix)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

/// The value of a downward API `resourceFieldRef`: the request or limit divided
/// by the divisor (default 1) and rounded up. A missing limit reads as the
/// node's allocatable amount, as upstream.
fn resource_value(
    ctx: &PodContext<'_>,
    node: &NodeContext,
    container: &Container,
    var: &str,
    selector: &ResourceFieldSelector,
) -> Result<String, EnvError> {
    let target = match selector.container_name.as_deref() {
        None | Some("") => container,
        Some(wanted) => ctx
            .pod
            .spec
            .iter()
            .flat_map(|s| {
                s.containers
                    .iter()
                    .chain(s.init_containers.iter().flatten())
            })
            .find(|c| c.name == wanted)
            .ok_or_else(|| EnvError::NoSuchContainer {
                container: container.name.clone(),
                var: var.to_owned(),
                target: wanted.to_owned(),
            })?,
    };
    let requirements = Requirements::of(target)?;
    let divisor = selector.divisor.as_ref().map_or("", |d| d.0.as_str());
    super::downward::resource_value(
        &requirements,
        &node.allocatable,
        &selector.resource,
        divisor,
    )
    .map_err(|e| match e {
        DownwardError::Divisor { divisor, source } => EnvError::Divisor {
            container: container.name.clone(),
            var: var.to_owned(),
            divisor,
            source,
        },
        DownwardError::Resource(resource) => EnvError::Resource {
            container: container.name.clone(),
            var: var.to_owned(),
            resource,
        },
    })
}
