//! A container's environment and `$(VAR)` expansion, as upstream's
//! `makeEnvironmentVariables` and `expansion` package do them.
//!
//! Variables are resolved in declaration order: a `value` may refer to the
//! variables declared before it and to the service variables; a reference to
//! anything else stays as written, and `$$` is a literal `$`. A name declared
//! twice keeps its first place and its last value. Service variables not
//! shadowed by the container follow, in name order.
//!
//! ConfigMaps and Secrets (`envFrom`, `valueFrom.configMapKeyRef` and
//! `secretKeyRef`) are read from the node's config directory, as their
//! volumes are (see [`crate::volume::payload`]), with upstream's rules:
//! `envFrom` sources come first, in order, each key (with the source's
//! `prefix`) a variable unless it is not a valid variable name (skipped
//! with a warning); `env` then overrides them and may refer to them. A
//! missing object or key fails the container unless marked `optional`; an
//! optional key reference that is missing leaves its variable unset.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    Container, KeyToPath, ObjectFieldSelector, Pod, ResourceFieldSelector,
};
use thiserror::Error;

use super::downward::{DownwardError, format_map};
use super::quantity::QuantityError;
use super::resources::{Requirements, ResourcesError};
use super::{NodeContext, PodContext};
use crate::volume::payload::{DEFAULT_MODE, KeyKind, PayloadError, Sources, key_files};

/// Errors of this module.
#[derive(Debug, Error)]
pub enum EnvError {
    /// A ConfigMap or Secret (or one of its keys) that cannot be read.
    #[error("container {container:?}: {field}: {source}")]
    Source {
        /// The container's name.
        container: String,
        /// Where the reference is (`envFrom[0]`, `env[FOO]`).
        field: String,
        /// What is wrong with the object (boxed: it is large).
        source: Box<PayloadError>,
    },
    /// An `envFrom` entry naming neither a ConfigMap nor a Secret.
    #[error("container {container:?}: envFrom[{index}] has neither configMapRef nor secretRef")]
    NoEnvFromSource {
        /// The container's name.
        container: String,
        /// Its index in `envFrom`.
        index: usize,
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

    let src = Sources {
        config_dir: &node.config_dir,
        pod: ctx.pod,
        node,
    };
    let source_err = |field: String| {
        move |source| EnvError::Source {
            container: name.clone(),
            field,
            source: Box::new(source),
        }
    };
    for (i, from) in container.env_from.iter().flatten().enumerate() {
        let (kind, reference, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(c), _) => (KeyKind::ConfigMap, &c.name, c.optional),
            (None, Some(s)) => (KeyKind::Secret, &s.name, s.optional),
            (None, None) => {
                return Err(EnvError::NoEnvFromSource {
                    container: name.clone(),
                    index: i,
                });
            }
        };
        let keys = key_files(
            &src,
            kind,
            reference,
            None,
            DEFAULT_MODE,
            optional.unwrap_or(false),
        )
        .map_err(source_err(format!("envFrom[{i}]")))?;
        let prefix = from.prefix.as_deref().unwrap_or("");
        let mut invalid = Vec::new();
        for (key, file) in keys {
            let var = format!("{prefix}{key}");
            if !is_env_var_name(&var) {
                invalid.push(var);
                continue;
            }
            let value = String::from_utf8_lossy(&file.data).into_owned();
            if values.insert(var.clone(), value).is_none() {
                order.push(var);
            }
        }
        if !invalid.is_empty() {
            tracing::warn!(
                container = %name,
                "InvalidEnvironmentVariableNames: keys {invalid:?} from envFrom[{i}] ({kind:?} {reference:?}) were skipped since they are invalid environment variable names"
            );
        }
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
                let key_ref = |kind, reference: &str, key: &str, optional: Option<bool>| {
                    let item = KeyToPath {
                        key: key.to_owned(),
                        path: key.to_owned(),
                        ..KeyToPath::default()
                    };
                    let mut keys = key_files(
                        &src,
                        kind,
                        reference,
                        Some(std::slice::from_ref(&item)),
                        DEFAULT_MODE,
                        optional.unwrap_or(false),
                    )
                    .map_err(source_err(format!("env[{}]", var.name)))?;
                    Ok::<_, EnvError>(
                        keys.remove(key)
                            .map(|f| String::from_utf8_lossy(&f.data).into_owned()),
                    )
                };
                if let Some(field) = &from.field_ref {
                    field_value(ctx, node, field).ok_or_else(|| EnvError::FieldPath {
                        container: name.clone(),
                        var: var.name.clone(),
                        path: field.field_path.clone(),
                    })?
                } else if let Some(resource) = &from.resource_field_ref {
                    resource_value(ctx, node, container, &var.name, resource)?
                } else if let Some(r) = &from.config_map_key_ref {
                    match key_ref(KeyKind::ConfigMap, &r.name, &r.key, r.optional)? {
                        Some(v) => v,
                        // Optional and missing: the variable is not set.
                        None => continue,
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    match key_ref(KeyKind::Secret, &r.name, &r.key, r.optional)? {
                        Some(v) => v,
                        None => continue,
                    }
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
    let declared: BTreeSet<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    let services: Vec<(String, String)> = ctx
        .service_env
        .iter()
        .filter(|(k, _)| !declared.contains(k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend(services);
    Ok(env)
}

/// Whether `name` may name a variable, as upstream's relaxed rule (the
/// default since 1.32): printable ASCII but `=`, not empty.
pub fn is_env_var_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b'=')
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

#[cfg(test)]
mod tests {
    use std::fs;

    use rstest::rstest;
    use serde_json::{Value, json};
    use tempfile::TempDir;

    use super::*;

    /// A config dir with ConfigMap `app` (keys `MODE`, `level`, `bad=key`)
    /// and Secret `creds` (`PASSWORD`) in namespace `ns`.
    fn config() -> TempDir {
        let dir = TempDir::new().unwrap();
        let cm = dir.path().join("configmaps/ns/app");
        fs::create_dir_all(&cm).unwrap();
        fs::write(cm.join("MODE"), "fast").unwrap();
        fs::write(cm.join("level"), "3").unwrap();
        fs::write(cm.join("bad=key"), "x").unwrap();
        let secret = dir.path().join("secrets/ns/creds");
        fs::create_dir_all(&secret).unwrap();
        fs::write(secret.join("PASSWORD"), "hunter2").unwrap();
        dir
    }

    fn env_with(dir: &TempDir, container: Value) -> Result<Vec<(String, String)>, EnvError> {
        let mut c = json!({"name": "c"});
        c.as_object_mut()
            .unwrap()
            .extend(container.as_object().unwrap().clone());
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [c]},
        }))
        .unwrap();
        let node = NodeContext {
            config_dir: dir.path().to_path_buf(),
            ..NodeContext::default()
        };
        let container = pod.spec.as_ref().unwrap().containers[0].clone();
        container_env(&PodContext::new(&pod), &node, &container)
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn env_from_reads_every_valid_key_and_env_overrides_it() {
        let dir = config();
        let env = env_with(
            &dir,
            json!({
                "envFrom": [
                    {"configMapRef": {"name": "app"}},
                    {"prefix": "S_", "secretRef": {"name": "creds"}},
                    {"configMapRef": {"name": "absent", "optional": true}},
                ],
                "env": [
                    {"name": "MODE", "value": "slow:$(level)"},
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "PASSWORD"}}},
                    {"name": "LVL", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "level"}}},
                ],
            }),
        )
        .unwrap();
        // `bad=key` is no variable name: skipped. MODE keeps its place.
        assert_eq!(
            env,
            pairs(&[
                ("MODE", "slow:3"),
                ("level", "3"),
                ("S_PASSWORD", "hunter2"),
                ("PW", "hunter2"),
                ("LVL", "3"),
            ])
        );
    }

    #[rstest]
    #[case::optional_object(json!({"configMapKeyRef": {"name": "absent", "key": "k", "optional": true}}))]
    #[case::optional_key(json!({"secretKeyRef": {"name": "creds", "key": "nope", "optional": true}}))]
    fn a_missing_optional_key_leaves_the_variable_unset(#[case] from: Value) {
        let dir = config();
        let env = env_with(&dir, json!({"env": [{"name": "V", "valueFrom": from}]})).unwrap();
        assert!(env.is_empty(), "{env:?}");
    }

    #[rstest]
    #[case::env_from_object(json!({"envFrom": [{"configMapRef": {"name": "absent"}}]}), "envFrom[0]", "configMap ns/absent not found")]
    #[case::secret_object(json!({"envFrom": [{"secretRef": {"name": "absent", "optional": false}}]}), "envFrom[0]", "secret ns/absent not found")]
    #[case::key_object(json!({"env": [{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}]}), "env[V]", "configMap ns/absent not found")]
    #[case::key(json!({"env": [{"name": "V", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}]}), "env[V]", "secret ns/creds has no key \"k\"")]
    #[case::bad_name(json!({"envFrom": [{"configMapRef": {"name": "../x"}}]}), "envFrom[0]", "not usable as a file name")]
    fn a_missing_source_fails_naming_it(
        #[case] container: Value,
        #[case] field: &str,
        #[case] message: &str,
    ) {
        let dir = config();
        let err = env_with(&dir, container).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, EnvError::Source { field: f, .. } if f == field),
            "{err:?}"
        );
        assert!(text.contains(message), "{text}");
    }

    #[test]
    fn an_env_from_without_a_source_is_refused() {
        let dir = config();
        let err = env_with(&dir, json!({"envFrom": [{"prefix": "X_"}]})).unwrap_err();
        assert!(
            matches!(err, EnvError::NoEnvFromSource { index: 0, .. }),
            "{err:?}"
        );
    }

    #[rstest]
    #[case("PATH", true)]
    #[case("my.var-1", true)]
    #[case("1st", true)]
    #[case("", false)]
    #[case("A=B", false)]
    #[case("tab\there", false)]
    #[case("é", false)]
    fn env_var_names(#[case] name: &str, #[case] valid: bool) {
        assert_eq!(is_env_var_name(name), valid);
    }
}
