//! Network configuration lists as runtimes load them from a CNI config dir
//! (libcni and containerd's rules): `*.conflist`, `*.conf` and `*.json` in
//! file-name order, the first valid one wins, a single-plugin `.conf` is
//! wrapped as a list of one, and each plugin's stdin is its object plus the
//! list's `name` and `cniVersion`, the capability args it declares as
//! `runtimeConfig`, and the chain's `prevResult`.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::protocol::version_lt;
use crate::types::{SUPPORTED_VERSIONS, supported};

/// List-level key (berth's own) that turns the in-process fast path off for
/// a network: `"berth.dev/in-process": false` runs every plugin of the list
/// as an executable from the plugin dirs, even the ones berth has built in.
pub const IN_PROCESS_KEY: &str = "berth.dev/in-process";

/// The file name endings a config dir is scanned for.
pub const EXTENSIONS: &[&str] = &["conf", "conflist", "json"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading CNI config dir {path}: {source}")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading CNI config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CNI config {origin}: not JSON: {source}")]
    Json {
        origin: String,
        source: serde_json::Error,
    },
    #[error("CNI config {origin}: {reason}")]
    Invalid { origin: String, reason: String },
}

/// A network configuration list, validated: what a runtime runs for a pod.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    pub name: String,
    /// The version the list is run with: its `cniVersion`, or the highest
    /// supported entry of its `cniVersions` (1.1) when that is higher.
    pub cni_version: String,
    pub disable_check: bool,
    pub disable_gc: bool,
    /// False when the list says `"berth.dev/in-process": false`.
    pub in_process: bool,
    pub plugins: Vec<PluginConfig>,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
}

/// One plugin of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub plugin_type: String,
    /// The `capabilities` it declares with `true`.
    pub capabilities: BTreeSet<String>,
    /// Its object, as written in the list.
    pub raw: Map<String, Value>,
}

/// What scanning a config dir found.
#[derive(Debug, Default)]
pub struct DirScan {
    /// The first valid config in name order.
    pub config: Option<NetworkConfig>,
    /// The files before it that were skipped, each with the reason.
    pub skipped: Vec<ConfigError>,
}

impl NetworkConfig {
    /// The config a runtime uses from `dir`: the first valid file by name,
    /// None when there is none (or no dir). Invalid files are skipped with
    /// a warning that names the file and the reason.
    pub fn load_dir(dir: &Path) -> Result<Option<NetworkConfig>, ConfigError> {
        Ok(Self::scan_dir(dir)?.config)
    }

    /// [`load_dir`](Self::load_dir), also returning why files were skipped
    /// (for a NetworkReady message that says what is wrong).
    pub fn scan_dir(dir: &Path) -> Result<DirScan, ConfigError> {
        let mut scan = DirScan::default();
        for path in config_files(dir)? {
            match Self::from_file(&path) {
                Ok(c) => {
                    scan.config = Some(c);
                    break;
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "skipping CNI config");
                    scan.skipped.push(e);
                }
            }
        }
        Ok(scan)
    }

    /// Reads one file: a list if it ends in `.conflist`, else one plugin's
    /// config, wrapped.
    pub fn from_file(path: &Path) -> Result<NetworkConfig, ConfigError> {
        let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let origin = path.display().to_string();
        let v = parse_json(&bytes, &origin)?;
        let mut c = if path.extension().is_some_and(|e| e == "conflist") {
            Self::from_list_value(&v, &origin)?
        } else {
            Self::from_plugin_value(&v, &origin)?
        };
        c.source = Some(path.to_owned());
        Ok(c)
    }

    /// Parses a `.conflist`'s content; `origin` names it in errors.
    pub fn from_list_bytes(bytes: &[u8], origin: &str) -> Result<NetworkConfig, ConfigError> {
        Self::from_list_value(&parse_json(bytes, origin)?, origin)
    }

    /// Parses a single plugin's `.conf` content and wraps it as a list.
    pub fn from_plugin_bytes(bytes: &[u8], origin: &str) -> Result<NetworkConfig, ConfigError> {
        Self::from_plugin_value(&parse_json(bytes, origin)?, origin)
    }

    pub fn from_list_value(v: &Value, origin: &str) -> Result<NetworkConfig, ConfigError> {
        parse_list(v).map_err(|reason| ConfigError::Invalid {
            origin: origin.to_string(),
            reason,
        })
    }

    pub fn from_plugin_value(v: &Value, origin: &str) -> Result<NetworkConfig, ConfigError> {
        parse_single(v).map_err(|reason| ConfigError::Invalid {
            origin: origin.to_string(),
            reason,
        })
    }

    /// The list as JSON (a `.conflist`), as cached next to an attachment.
    /// `cniVersion` is the effective version.
    pub fn to_list_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), self.cni_version.clone().into());
        m.insert("name".into(), self.name.clone().into());
        if self.disable_check {
            m.insert("disableCheck".into(), true.into());
        }
        if self.disable_gc {
            m.insert("disableGC".into(), true.into());
        }
        if !self.in_process {
            m.insert(IN_PROCESS_KEY.into(), false.into());
        }
        m.insert(
            "plugins".into(),
            Value::Array(
                self.plugins
                    .iter()
                    .map(|p| Value::Object(p.raw.clone()))
                    .collect(),
            ),
        );
        Value::Object(m)
    }

    /// Whether the list's version is at least `v`.
    pub fn version_at_least(&self, v: &str) -> bool {
        !version_lt(&self.cni_version, v)
    }

    /// The stdin of plugin `index` for an ADD, DEL or CHECK: its object,
    /// the list's `name` and `cniVersion`, `runtimeConfig` with the
    /// capability args it declares (left as written when it declares none
    /// that were given), and `prevResult` when there is one.
    pub fn plugin_stdin(
        &self,
        index: usize,
        prev_result: Option<&Value>,
        capability_args: &Map<String, Value>,
    ) -> Option<Value> {
        let p = self.plugins.get(index)?;
        let mut m = self.plugin_base(p);
        let rc = p.runtime_config(capability_args);
        if !rc.is_empty() {
            m.insert("runtimeConfig".into(), Value::Object(rc));
        }
        match prev_result {
            Some(r) => m.insert("prevResult".into(), r.clone()),
            None => m.remove("prevResult"),
        };
        Some(Value::Object(m))
    }

    /// The stdin of plugin `index` for STATUS, or GC with `valid`.
    pub fn plugin_stdin_gc(&self, index: usize, valid: Option<&Value>) -> Option<Value> {
        let p = self.plugins.get(index)?;
        let mut m = self.plugin_base(p);
        m.remove("prevResult");
        if let Some(v) = valid {
            m.insert("cni.dev/valid-attachments".into(), v.clone());
            // The 1.1 spec's text first named the key this way; plugins
            // written against it still read it (libcni sends both).
            m.insert("cni.dev/attachments".into(), v.clone());
        }
        Some(Value::Object(m))
    }

    fn plugin_base(&self, p: &PluginConfig) -> Map<String, Value> {
        let mut m = p.raw.clone();
        m.insert("name".into(), self.name.clone().into());
        m.insert("cniVersion".into(), self.cni_version.clone().into());
        m
    }
}

impl PluginConfig {
    /// The `runtimeConfig` this plugin gets: only the capability args whose
    /// capability it declares.
    pub fn runtime_config(&self, capability_args: &Map<String, Value>) -> Map<String, Value> {
        capability_args
            .iter()
            .filter(|(k, _)| self.capabilities.contains(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Whether `name` is a network name libcni accepts (it also names cache
/// files, so nothing that could leave the cache dir).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn config_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfigError::ReadDir {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut names: Vec<OsString> = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|source| ConfigError::ReadDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = entry.path();
        let wanted = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e));
        // A directory named like a config is not one; a broken link is kept
        // so that reading it reports why it is skipped.
        if wanted && !path.is_dir() {
            names.push(entry.file_name());
        }
    }
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

fn parse_json(bytes: &[u8], origin: &str) -> Result<Value, ConfigError> {
    serde_json::from_slice(bytes).map_err(|source| ConfigError::Json {
        origin: origin.to_string(),
        source,
    })
}

fn parse_list(v: &Value) -> Result<NetworkConfig, String> {
    let obj = v
        .as_object()
        .ok_or("a configuration list must be a JSON object")?;
    let name = parse_name(obj)?;
    let cni_version = effective_version(obj)?;
    let plugins = match obj.get("plugins") {
        None => {
            return Err(if obj.contains_key("type") {
                "no \"plugins\" list (this is a single plugin's config: name the file .conf)".into()
            } else {
                "no \"plugins\" list".into()
            });
        }
        Some(Value::Array(a)) if a.is_empty() => return Err("\"plugins\" is empty".into()),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, p)| parse_plugin(p).map_err(|r| format!("plugin #{i}: {r}")))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("\"plugins\" is not a list".into()),
    };
    Ok(NetworkConfig {
        name,
        cni_version,
        disable_check: parse_bool(obj, "disableCheck", false)?,
        disable_gc: parse_bool(obj, "disableGC", false)?,
        in_process: parse_bool(obj, IN_PROCESS_KEY, true)?,
        plugins,
        source: None,
    })
}

fn parse_single(v: &Value) -> Result<NetworkConfig, String> {
    let obj = v
        .as_object()
        .ok_or("a network configuration must be a JSON object")?;
    if obj.contains_key("plugins") {
        return Err("has a \"plugins\" list: a list of plugins belongs in a .conflist file".into());
    }
    let name = parse_name(obj)?;
    let cni_version = effective_version(obj)?;
    let plugin = parse_plugin(v)?;
    Ok(NetworkConfig {
        name,
        cni_version,
        disable_check: false,
        disable_gc: false,
        in_process: parse_bool(obj, IN_PROCESS_KEY, true)?,
        plugins: vec![plugin],
        source: None,
    })
}

fn parse_name(obj: &Map<String, Value>) -> Result<String, String> {
    match obj.get("name") {
        None => Err("no \"name\"".into()),
        Some(Value::String(n)) if valid_name(n) => Ok(n.clone()),
        Some(Value::String(n)) => Err(format!(
            "network name {n:?} is invalid (letters, digits, '_', '.', '-', starting with a letter or digit)"
        )),
        Some(_) => Err("\"name\" is not a string".into()),
    }
}

/// The version to run: the highest supported of `cniVersion` and the
/// entries of `cniVersions`.
fn effective_version(obj: &Map<String, Value>) -> Result<String, String> {
    let declared = match obj.get("cniVersion") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("\"cniVersion\" is not a string".into()),
    };
    let listed: Vec<String> = match obj.get("cniVersions") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| "\"cniVersions\" has an entry that is not a string".to_string())
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("\"cniVersions\" is not a list".into()),
    };
    let best = declared
        .iter()
        .chain(&listed)
        .filter(|v| supported(v))
        .fold(None::<&String>, |best, v| match best {
            Some(b) if !version_lt(b, v) => Some(b),
            _ => Some(v),
        })
        .cloned();
    if let Some(v) = best {
        return Ok(v);
    }
    if declared.is_none() && listed.is_empty() {
        return Err("no \"cniVersion\"".into());
    }
    Err(format!(
        "cniVersion {} is not supported (berth supports {})",
        declared
            .iter()
            .chain(&listed)
            .map(|v| format!("{v:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        SUPPORTED_VERSIONS.join(", ")
    ))
}

fn parse_plugin(v: &Value) -> Result<PluginConfig, String> {
    let raw = v.as_object().ok_or("not a JSON object")?.clone();
    let plugin_type = match raw.get("type") {
        None => return Err("no \"type\"".into()),
        Some(Value::String(t))
            if !t.is_empty() && !t.contains('/') && t != "." && t != ".." && !t.contains('\0') =>
        {
            t.clone()
        }
        Some(Value::String(t)) => return Err(format!("plugin type {t:?} is not a plain name")),
        Some(_) => return Err("\"type\" is not a string".into()),
    };
    let capabilities = match raw.get("capabilities") {
        None => BTreeSet::new(),
        Some(Value::Object(c)) => c
            .iter()
            .filter(|(_, on)| on.as_bool() == Some(true))
            .map(|(k, _)| k.clone())
            .collect(),
        Some(_) => return Err("\"capabilities\" is not an object".into()),
    };
    Ok(PluginConfig {
        plugin_type,
        capabilities,
        raw,
    })
}

/// A boolean flag; libcni also takes the strings "true" and "false".
fn parse_bool(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(format!("{key:?} is not a boolean: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, name: &str, content: &str) {
        std::fs::write(dir.join(name), content).unwrap();
    }

    const BRIDGE_LIST: &str = r#"{"cniVersion":"1.0.0","name":"podnet","plugins":[
        {"type":"bridge","bridge":"cni0","ipam":{"type":"host-local"}},
        {"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn the_first_valid_file_by_name_wins_and_the_invalid_ones_say_why() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "05-broken.conflist", "{not json");
        write(
            d.path(),
            "10-old.conflist",
            r#"{"cniVersion":"0.2.0","name":"old","plugins":[{"type":"bridge"}]}"#,
        );
        write(
            d.path(),
            "15-empty.conflist",
            r#"{"cniVersion":"1.0.0","name":"e","plugins":[]}"#,
        );
        write(d.path(), "20-good.conflist", BRIDGE_LIST);
        write(
            d.path(),
            "30-later.conf",
            r#"{"cniVersion":"1.0.0","name":"later","type":"bridge"}"#,
        );
        write(d.path(), "00-ignored.txt", "{}");
        std::fs::create_dir(d.path().join("01-dir.conf")).unwrap();

        let scan = NetworkConfig::scan_dir(d.path()).unwrap();
        let c = scan.config.unwrap();
        assert_eq!(c.name, "podnet");
        assert_eq!(
            c.source.as_deref(),
            Some(d.path().join("20-good.conflist").as_path())
        );
        let reasons: Vec<String> = scan.skipped.iter().map(|e| e.to_string()).collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("05-broken.conflist") && reasons[0].contains("not JSON"));
        assert!(
            reasons[1].contains("10-old.conflist")
                && reasons[1].contains("\"0.2.0\" is not supported")
        );
        assert!(reasons[2].contains("15-empty.conflist") && reasons[2].contains("empty"));
        assert_eq!(NetworkConfig::load_dir(d.path()).unwrap(), Some(c));
    }

    #[test]
    fn no_dir_or_no_valid_file_is_no_config() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            NetworkConfig::load_dir(&d.path().join("missing")).unwrap(),
            None
        );
        write(d.path(), "a.json", r#"{"name":"x","type":"bridge"}"#);
        let scan = NetworkConfig::scan_dir(d.path()).unwrap();
        assert!(scan.config.is_none());
        assert!(scan.skipped[0].to_string().contains("no \"cniVersion\""));
    }

    #[test]
    fn a_single_plugin_conf_is_wrapped_as_a_list() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "10-net.conf",
            r#"{"cniVersion":"0.4.0","name":"single","type":"bridge","bridge":"br9","capabilities":{"ips":true,"mac":false}}"#,
        );
        let c = NetworkConfig::load_dir(d.path()).unwrap().unwrap();
        assert_eq!(c.name, "single");
        assert_eq!(c.cni_version, "0.4.0");
        assert_eq!(c.plugins.len(), 1);
        assert_eq!(c.plugins[0].plugin_type, "bridge");
        assert_eq!(c.plugins[0].raw["bridge"], "br9");
        assert_eq!(
            c.plugins[0].capabilities,
            BTreeSet::from(["ips".to_string()])
        );
        assert!(!c.disable_check && !c.disable_gc && c.in_process);
    }

    #[test]
    fn lists_and_single_configs_do_not_mix() {
        let e = NetworkConfig::from_plugin_bytes(BRIDGE_LIST.as_bytes(), "x.conf").unwrap_err();
        assert!(e.to_string().contains(".conflist"), "{e}");
        let e = NetworkConfig::from_list_bytes(
            br#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
            "x.conflist",
        )
        .unwrap_err();
        assert!(e.to_string().contains("name the file .conf"), "{e}");
    }

    #[test]
    fn versions() {
        let list = |extra: &str| {
            NetworkConfig::from_list_bytes(
                format!(r#"{{"name":"n",{extra}"plugins":[{{"type":"bridge"}}]}}"#).as_bytes(),
                "t",
            )
        };
        assert_eq!(
            list(r#""cniVersion":"0.3.1","#).unwrap().cni_version,
            "0.3.1"
        );
        // cniVersions (1.1): the highest we support, if above cniVersion.
        let c = list(r#""cniVersion":"0.4.0","cniVersions":["1.0.0","1.1.0","9.0.0"],"#).unwrap();
        assert_eq!(c.cni_version, "1.1.0");
        let c = list(r#""cniVersion":"1.0.0","cniVersions":["0.3.1"],"#).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        let c = list(r#""cniVersion":"7.0.0","cniVersions":["1.0.0"],"#).unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        let e = list(r#""cniVersion":"2.0.0","#).unwrap_err().to_string();
        assert!(
            e.contains("\"2.0.0\" is not supported") && e.contains("1.1.0"),
            "{e}"
        );
        let e = list("").unwrap_err().to_string();
        assert!(e.contains("no \"cniVersion\""), "{e}");
        let e = list(r#""cniVersion":1,"#).unwrap_err().to_string();
        assert!(e.contains("not a string"), "{e}");
    }

    #[test]
    fn flags_names_and_types_are_checked() {
        let c = NetworkConfig::from_list_value(
            &json!({"cniVersion":"1.1.0","name":"n","disableCheck":"true","disableGC":true,
                    IN_PROCESS_KEY:false,"plugins":[{"type":"bridge"}]}),
            "t",
        )
        .unwrap();
        assert!(c.disable_check && c.disable_gc && !c.in_process);
        let bad = [
            (
                json!({"cniVersion":"1.0.0","name":"../x","plugins":[{"type":"b"}]}),
                "network name",
            ),
            (
                json!({"cniVersion":"1.0.0","plugins":[{"type":"b"}]}),
                "no \"name\"",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../bin/sh"}]}),
                "plugin #0: plugin type",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a"},{"bridge":"x"}]}),
                "plugin #1: no \"type\"",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","plugins":[{"type":"a","capabilities":[]}]}),
                "capabilities",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","disableCheck":3,"plugins":[{"type":"a"}]}),
                "disableCheck",
            ),
            (
                json!({"cniVersion":"1.0.0","name":"n","plugins":{}}),
                "not a list",
            ),
            (json!(["x"]), "JSON object"),
        ];
        for (v, want) in bad {
            let e = NetworkConfig::from_list_value(&v, "t")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
    }

    #[test]
    fn plugins_get_only_the_capabilities_they_declare() {
        let c = NetworkConfig::from_list_bytes(
            br#"{"cniVersion":"1.0.0","name":"podnet","plugins":[
                {"type":"bridge","cniVersion":"0.3.1","name":"other","ipam":{"type":"host-local"},
                 "capabilities":{"ips":true}},
                {"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}},
                {"type":"loopback","runtimeConfig":{"kept":1}}]}"#,
            "t",
        )
        .unwrap();
        let caps = json!({"portMappings":[{"hostPort":80,"containerPort":8080}],
                          "ips":["10.0.0.9/24"],"bandwidth":{"ingressRate":1}})
        .as_object()
        .unwrap()
        .clone();
        let prev = json!({"cniVersion":"1.0.0","ips":[]});
        let b = c.plugin_stdin(0, None, &caps).unwrap();
        // The list's name and version override the plugin's own.
        assert_eq!(b["name"], "podnet");
        assert_eq!(b["cniVersion"], "1.0.0");
        assert_eq!(b["runtimeConfig"], json!({"ips":["10.0.0.9/24"]}));
        assert!(b.get("prevResult").is_none());
        let p = c.plugin_stdin(1, Some(&prev), &caps).unwrap();
        assert_eq!(
            p["runtimeConfig"],
            json!({"portMappings":[{"hostPort":80,"containerPort":8080}]})
        );
        assert_eq!(p["prevResult"], prev);
        let l = c.plugin_stdin(2, Some(&prev), &caps).unwrap();
        assert_eq!(l["runtimeConfig"], json!({"kept":1}));
        let empty = Map::new();
        assert!(
            c.plugin_stdin(1, None, &empty)
                .unwrap()
                .get("runtimeConfig")
                .is_none()
        );
        assert!(c.plugin_stdin(3, None, &empty).is_none());

        let valid = json!([{"containerID":"c1","ifname":"eth0"}]);
        let g = c.plugin_stdin_gc(1, Some(&valid)).unwrap();
        assert_eq!(g["cni.dev/valid-attachments"], valid);
        assert!(g.get("runtimeConfig").is_none());
    }

    #[test]
    fn the_list_round_trips_through_its_json() {
        let c = NetworkConfig::from_list_value(
            &json!({"cniVersion":"0.4.0","cniVersions":["1.0.0"],"name":"n","disableGC":true,
                    IN_PROCESS_KEY:false,"plugins":[{"type":"bridge","x":1}]}),
            "t",
        )
        .unwrap();
        let back = NetworkConfig::from_list_value(&c.to_list_value(), "t").unwrap();
        assert_eq!(back, c);
        assert_eq!(back.cni_version, "1.0.0");
    }
}
