//! How a plugin is invoked (CNI spec, "Execution protocol"): the `CNI_*`
//! environment, the config on stdin, the result or error on stdout, and the
//! exit code. [`run`] does all of it around a [`Plugin`], so a plugin's
//! executable and berth's in-process fast path behave identically.

use std::path::PathBuf;

use serde_json::Value;

use crate::types::{
    CURRENT_VERSION, CniError, CniResult, NetConf, SUPPORTED_VERSIONS, code, supported,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// One invocation of a plugin.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS`: `K=V;K=V`.
    pub args: Vec<(String, String)>,
    pub path: Vec<PathBuf>,
    pub stdin: Vec<u8>,
}

impl Invocation {
    /// Reads the `CNI_*` variables through `env`; refuses (code 4) what the
    /// command needs and lacks.
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
        stdin: Vec<u8>,
    ) -> Result<Self, CniError> {
        let missing = |name: &str, cmd: &str| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("{name} is required for {cmd}"),
            )
        };
        let cmd_s = env("CNI_COMMAND").ok_or_else(|| missing("CNI_COMMAND", "any command"))?;
        let command = Command::parse(&cmd_s).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_COMMAND {cmd_s:?} is not ADD, DEL, CHECK, VERSION, STATUS or GC"),
            )
        })?;
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let get = |name: &str, required: bool| -> Result<String, CniError> {
            match env(name).filter(|v| !v.is_empty()) {
                Some(v) => Ok(v),
                None if required => Err(missing(name, command.as_str())),
                None => Ok(String::new()),
            }
        };
        let container_id = get("CNI_CONTAINERID", needs_container)?;
        let ifname = get("CNI_IFNAME", needs_container)?;
        let netns = get(
            "CNI_NETNS",
            matches!(command, Command::Add | Command::Check),
        )?;
        let args = get("CNI_ARGS", false)?
            .split(';')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| {
                        CniError::new(
                            code::INVALID_ENVIRONMENT,
                            format!("CNI_ARGS entry {kv:?} is not KEY=VALUE"),
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        let path = get("CNI_PATH", false)?
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(Invocation {
            command,
            container_id,
            netns: (!netns.is_empty()).then(|| PathBuf::from(netns)),
            ifname,
            args,
            path,
            stdin,
        })
    }
}

/// What a plugin does; [`run`] handles the protocol around it.
pub trait Plugin {
    fn add(&self, inv: &Invocation, conf: &NetConf, raw: &Value) -> Result<CniResult, CniError>;
    fn del(&self, inv: &Invocation, conf: &NetConf, raw: &Value) -> Result<(), CniError>;
    fn check(&self, inv: &Invocation, conf: &NetConf, raw: &Value) -> Result<(), CniError>;
    fn status(&self, _inv: &Invocation, _conf: &NetConf, _raw: &Value) -> Result<(), CniError> {
        Ok(())
    }
    fn gc(&self, _inv: &Invocation, _conf: &NetConf, _raw: &Value) -> Result<(), CniError> {
        Ok(())
    }
}

/// What a plugin prints and its exit code.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub exit_code: i32,
}

/// Runs one invocation: VERSION, config decoding and version checks, the
/// command, and the result converted to the config's version.
pub fn run(plugin: &dyn Plugin, inv: &Invocation) -> Outcome {
    match run_inner(plugin, inv) {
        Ok(Some(v)) => Outcome {
            stdout: serde_json::to_vec(&v).unwrap_or_default(),
            exit_code: 0,
        },
        Ok(None) => Outcome {
            stdout: Vec::new(),
            exit_code: 0,
        },
        Err(e) => Outcome {
            stdout: serde_json::to_vec(&e).unwrap_or_default(),
            exit_code: 1,
        },
    }
}

fn run_inner(plugin: &dyn Plugin, inv: &Invocation) -> Result<Option<Value>, CniError> {
    if inv.command == Command::Version {
        return Ok(Some(serde_json::json!({
            "cniVersion": CURRENT_VERSION,
            "supportedVersions": SUPPORTED_VERSIONS,
        })));
    }
    let raw: Value = serde_json::from_slice(&inv.stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "the network configuration is not JSON",
        )
        .with_details(e.to_string())
    })?;
    let conf: NetConf = serde_json::from_value(raw.clone()).map_err(|e| {
        CniError::new(code::INVALID_CONFIG, "invalid network configuration")
            .with_details(e.to_string())
    })?;
    if !supported(&conf.cni_version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {:?} is not supported (supported: {})",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let version_check = |min: &str| {
        if version_lt(&conf.cni_version, min) {
            Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "{} needs cniVersion {min} or later, the config says {}",
                    inv.command.as_str(),
                    conf.cni_version
                ),
            ))
        } else {
            Ok(())
        }
    };
    let tag = |mut e: CniError| {
        e.cni_version = conf.cni_version.clone();
        e
    };
    match inv.command {
        Command::Add => {
            let r = plugin.add(inv, &conf, &raw).map_err(tag)?;
            Ok(Some(r.to_value(&conf.cni_version)?))
        }
        Command::Del => plugin.del(inv, &conf, &raw).map_err(tag).map(|()| None),
        Command::Check => {
            version_check("0.4.0")?;
            plugin.check(inv, &conf, &raw).map_err(tag).map(|()| None)
        }
        Command::Status => {
            version_check("1.1.0")?;
            plugin.status(inv, &conf, &raw).map_err(tag).map(|()| None)
        }
        Command::Gc => {
            version_check("1.1.0")?;
            plugin.gc(inv, &conf, &raw).map_err(tag).map(|()| None)
        }
        Command::Version => Ok(None),
    }
}

/// Compares dotted versions numerically.
pub fn version_lt(a: &str, b: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a) < parse(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Echo;
    impl Plugin for Echo {
        fn add(&self, _: &Invocation, c: &NetConf, _: &Value) -> Result<CniResult, CniError> {
            Ok(CniResult {
                cni_version: c.cni_version.clone(),
                ..Default::default()
            })
        }
        fn del(&self, _: &Invocation, _: &NetConf, _: &Value) -> Result<(), CniError> {
            Ok(())
        }
        fn check(&self, _: &Invocation, _: &NetConf, _: &Value) -> Result<(), CniError> {
            Ok(())
        }
    }

    fn inv(vars: &[(&str, &str)], stdin: &str) -> Result<Invocation, CniError> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Invocation::from_env(|k| m.get(k).cloned(), stdin.as_bytes().to_vec())
    }

    #[test]
    fn add_needs_its_environment() {
        let e = inv(&[("CNI_COMMAND", "ADD")], "{}").unwrap_err();
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
        assert!(e.msg.contains("CNI_CONTAINERID"));
        let e = inv(&[("CNI_COMMAND", "JUMP")], "{}").unwrap_err();
        assert_eq!(e.code, code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn version_and_bad_configs() {
        let v = inv(&[("CNI_COMMAND", "VERSION")], "").unwrap();
        let out: Value = serde_json::from_slice(&run(&Echo, &v).stdout).unwrap();
        assert_eq!(out["cniVersion"], CURRENT_VERSION);

        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
        ];
        let o = run(&Echo, &inv(&add, "{not json").unwrap());
        assert_eq!(o.exit_code, 1);
        let e: CniError = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(e.code, code::DECODE_FAILURE);

        let o = run(
            &Echo,
            &inv(&add, r#"{"cniVersion":"9.9.9","name":"n","type":"x"}"#).unwrap(),
        );
        let e: CniError = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);

        let o = run(
            &Echo,
            &inv(&add, r#"{"cniVersion":"1.0.0","name":"n"}"#).unwrap(),
        );
        let e: CniError = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(e.code, code::INVALID_CONFIG);

        let o = run(
            &Echo,
            &inv(&add, r#"{"cniVersion":"0.4.0","name":"n","type":"x"}"#).unwrap(),
        );
        assert_eq!(o.exit_code, 0);
        let r: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["cniVersion"], "0.4.0");
    }

    #[test]
    fn status_needs_1_1() {
        let st = [("CNI_COMMAND", "STATUS")];
        let o = run(
            &Echo,
            &inv(&st, r#"{"cniVersion":"1.0.0","name":"n","type":"x"}"#).unwrap(),
        );
        let e: CniError = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let o = run(
            &Echo,
            &inv(&st, r#"{"cniVersion":"1.1.0","name":"n","type":"x"}"#).unwrap(),
        );
        assert_eq!(o.exit_code, 0);
    }
}
