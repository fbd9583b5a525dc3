//! The CNI client berth's runtime uses for every pod sandbox: runs a network
//! configuration list's plugins for ADD, DEL, CHECK, STATUS and GC as the
//! spec's "runtime" does (libcni's behaviour where the spec leaves room),
//! and records each attachment on disk ([`cache`]) so that DEL and GC still
//! work after a daemon restart.
//!
//! The API is blocking: plugins are processes to wait for, and in-process
//! plugins switch network namespaces on threads of their own. The CRI
//! server calls it from `spawn_blocking`.
//!
//! # In-process plugins
//!
//! A client made [`with_builtin`](Client::with_builtin) runs a plugin type
//! the function knows in-process, through [`protocol::run`] with exactly the
//! stdin and `CNI_*` values its executable would get, and reads its output
//! the way it reads an executable's. The rule is simple on purpose: a type
//! the function knows is always run in-process, whatever executables the
//! plugin dirs hold, unless the list says `"berth.dev/in-process": false`
//! ([`config::IN_PROCESS_KEY`]), which runs all its plugins as executables.
//!
//! # Differences from libcni, on purpose
//!
//! - All plugins are looked up before an ADD runs any, so a missing one
//!   fails the ADD with nothing configured; an ADD of an attachment that is
//!   already complete is refused (its failure would undo the live one).
//! - A failed ADD is undone here (DEL of the failed plugin and of all
//!   before it, in reverse), not left to the caller.
//! - The cache entry is written before the chain runs (marked incomplete),
//!   so that an attachment half made by a daemon killed mid-ADD is still
//!   found, and undone, by DEL and GC.
//! - DEL runs every plugin even when one fails (and reports all failures),
//!   so one broken plugin does not keep the others' resources; the cache
//!   entry stays until a DEL fully succeeds. It uses the config, CNI_ARGS
//!   and capability args the ADD ran with when they are cached (as CRI-O
//!   does), so a changed config dir or a caller that lost the port
//!   mappings still undoes exactly what was done; if that fails and the
//!   given config differs, DEL is tried again with the given one.

pub mod cache;
pub mod config;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::invoke;
use crate::protocol::{self, Command, Invocation, Plugin};
use crate::types::{CniError, CniResult, code};

pub use cache::{Cache, CacheEntry, CacheError};
pub use config::{ConfigError, DirScan, NetworkConfig, PluginConfig};

/// Resolves a plugin type to an in-process implementation (e.g.
/// `berth_cni::plugins::by_name`).
pub type BuiltinFn = fn(&str) -> Option<Box<dyn Plugin>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "network {network}: {command} of plugin {plugin} (#{index} in the list) failed: {source}"
    )]
    Plugin {
        network: String,
        plugin: String,
        index: usize,
        command: &'static str,
        source: Box<CniError>,
    },
    #[error("network {network}: plugin {plugin:?} not found in the plugin dirs ({dirs})")]
    PluginNotFound {
        network: String,
        plugin: String,
        dirs: String,
    },
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("network {network}: {command} needs cniVersion {needs} or later, the config has {has}")]
    Unsupported {
        network: String,
        command: &'static str,
        needs: &'static str,
        has: String,
    },
    #[error(
        "network {network}: container {container_id} interface {ifname} has no cached result (was it added?)"
    )]
    NotAttached {
        network: String,
        container_id: String,
        ifname: String,
    },
    #[error(
        "network {network}: container {container_id} interface {ifname} is already attached (DEL it first)"
    )]
    AlreadyAttached {
        network: String,
        container_id: String,
        ifname: String,
    },
    #[error("{failed}; undoing it also failed: {}", join(rollback))]
    RollbackFailed {
        failed: Box<ClientError>,
        rollback: Vec<ClientError>,
    },
    #[error("network {network}: {command} failed: {}", join(errors))]
    Several {
        network: String,
        command: &'static str,
        errors: Vec<ClientError>,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn join(errors: &[ClientError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl ClientError {
    /// The plugin's CNI error, if a plugin failed (the first one's, for an
    /// error that gathers several).
    pub fn cni_error(&self) -> Option<&CniError> {
        match self {
            ClientError::Plugin { source, .. } => Some(source.as_ref()),
            ClientError::RollbackFailed { failed, .. } => failed.cni_error(),
            ClientError::Several { errors, .. } => errors.iter().find_map(|e| e.cni_error()),
            _ => None,
        }
    }
}

/// One attachment of a container to a network, as the runtime describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attachment {
    pub container_id: String,
    /// The pod's netns path (`CNI_NETNS`); may be None for a DEL whose
    /// netns is gone.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// `CNI_ARGS` (e.g. `K8S_POD_NAMESPACE`, `K8S_POD_NAME`).
    pub args: Vec<(String, String)>,
    /// Capability args (`portMappings`, `ips`, `bandwidth`, ...): each
    /// plugin gets, as `runtimeConfig`, those it declares in `capabilities`.
    pub capability_args: Map<String, Value>,
}

impl Attachment {
    pub fn new(container_id: &str, netns: Option<&Path>, ifname: &str) -> Self {
        Attachment {
            container_id: container_id.to_string(),
            netns: netns.map(Path::to_owned),
            ifname: ifname.to_string(),
            ..Default::default()
        }
    }

    fn validate(&self) -> Result<(), ClientError> {
        if !config::valid_name(&self.container_id) {
            return Err(ClientError::InvalidName {
                what: "container ID",
                value: self.container_id.clone(),
                reason: "letters, digits, '_', '.', '-', starting with a letter or digit",
            });
        }
        let ifname_ok = !self.ifname.is_empty()
            && self.ifname.len() <= 15
            && self.ifname != "."
            && self.ifname != ".."
            && !self
                .ifname
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if !ifname_ok {
            return Err(ClientError::InvalidName {
                what: "interface name",
                value: self.ifname.clone(),
                reason: "1 to 15 characters, no '/', ':' or spaces, not '.' or '..'",
            });
        }
        Ok(())
    }
}

/// How a plugin type is run.
enum Runner {
    Builtin(Box<dyn Plugin>),
    Exec(PathBuf),
}

/// The CNI client: where plugins are, where the cache is, and the
/// in-process plugins. Cheap to clone; safe to share between threads
/// (concurrent calls for one attachment are the caller's to serialise).
#[derive(Clone)]
pub struct Client {
    plugin_dirs: Vec<PathBuf>,
    cache: Cache,
    builtin: Option<BuiltinFn>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("plugin_dirs", &self.plugin_dirs)
            .field("cache", &self.cache)
            .field("builtin", &self.builtin.is_some())
            .finish()
    }
}

impl Client {
    /// A client running executables from `plugin_dirs` (also the plugins'
    /// `CNI_PATH`), caching under `cache_dir`.
    pub fn new(plugin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> Self {
        Client {
            plugin_dirs,
            cache: Cache::new(&cache_dir),
            builtin: None,
        }
    }

    /// Runs the plugin types `f` knows in-process (see the module doc).
    pub fn with_builtin(mut self, f: BuiltinFn) -> Self {
        self.builtin = Some(f);
        self
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// ADD: runs the chain in order, each plugin with the previous one's
    /// result; on a failure, DEL of that plugin and of all before it, in
    /// reverse. The final result is cached for DEL, CHECK and GC.
    pub fn add(&self, net: &NetworkConfig, att: &Attachment) -> Result<CniResult, ClientError> {
        validate_network(net)?;
        att.validate()?;
        let runners = net
            .plugins
            .iter()
            .map(|p| self.resolve(net, p))
            .collect::<Result<Vec<_>, _>>()?;
        // A failed second ADD would be undone by DELs that take the first
        // one's interface and address with it.
        if let Ok(Some(e)) = self.cache.read(&net.name, &att.container_id, &att.ifname)
            && e.complete
        {
            return Err(ClientError::AlreadyAttached {
                network: net.name.clone(),
                container_id: att.container_id.clone(),
                ifname: att.ifname.clone(),
            });
        }
        let mut entry = CacheEntry::new(
            &net.name,
            &att.container_id,
            &att.ifname,
            net.to_list_value(),
        );
        entry.netns = att.netns.clone();
        entry.args = att.args.clone();
        entry.capability_args = att.capability_args.clone();
        self.cache.write(&entry)?;

        let mut prev: Option<(CniResult, Value)> = None;
        for (i, runner) in runners.iter().enumerate() {
            let step = self
                .call(
                    net,
                    i,
                    runner,
                    Command::Add,
                    att,
                    prev.as_ref().map(|p| &p.1),
                )
                .and_then(|out| self.decode_result(net, i, out));
            match step {
                Ok(r) => prev = Some(r),
                Err(e) => {
                    let prev = prev.map(|p| p.1);
                    return Err(self.roll_back(net, att, &runners[..=i], prev, entry, e));
                }
            }
        }
        let Some((result, value)) = prev else {
            // validate_network refuses an empty list.
            return Err(self.roll_back(net, att, &runners, None, entry, empty_list(net)));
        };
        entry.result = Some(value.clone());
        entry.complete = true;
        if let Err(e) = self.cache.write(&entry) {
            // Without the record a later DEL would lack the prevResult (and
            // GC would not know the attachment): undo rather than leak.
            return Err(self.roll_back(net, att, &runners, Some(value), entry, e.into()));
        }
        Ok(result)
    }

    /// DEL: runs the chain in reverse with the cached prevResult; a
    /// container never added (or already deleted, or whose netns is gone)
    /// still gets its DELs, as libcni does, and succeeds if they do. What
    /// the caller leaves out (netns, CNI_ARGS, a capability arg) comes from
    /// the cache; what it gives wins. The cache entry goes once every plugin
    /// has succeeded.
    pub fn del(&self, net: &NetworkConfig, att: &Attachment) -> Result<(), ClientError> {
        validate_network(net)?;
        att.validate()?;
        let entry = match self.cache.read(&net.name, &att.container_id, &att.ifname) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "DEL without the cached attachment");
                None
            }
        };
        let mut att = att.clone();
        let mut used = net.clone();
        let mut prev = None;
        if let Some(entry) = entry {
            match NetworkConfig::from_list_value(&entry.config, "cache entry") {
                Ok(c) if c.name == net.name => used = c,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "DEL with the given config"),
            }
            if att.netns.is_none() {
                att.netns = entry.netns;
            }
            if att.args.is_empty() {
                att.args = entry.args;
            }
            for (k, v) in entry.capability_args {
                att.capability_args.entry(k).or_insert(v);
            }
            prev = entry
                .result
                .and_then(|r| convert(&r, &used.cni_version, &net.name));
        }
        let mut errors = self.del_chain(&used, &att, prev.as_ref());
        if !errors.is_empty() && used.to_list_value() != net.to_list_value() {
            // A cached config that cannot be undone (a plugin since removed,
            // a setting since fixed) must not keep the attachment forever.
            tracing::warn!(network = %net.name, container = %att.container_id,
                "DEL with the cached config failed; trying the current one");
            let prev = prev.and_then(|r| convert(&r, &net.cni_version, &net.name));
            let retry = self.del_chain(net, &att, prev.as_ref());
            if retry.is_empty() {
                errors.clear();
            } else {
                errors.extend(retry);
            }
        }
        if !errors.is_empty() {
            return Err(several(&net.name, "DEL", errors));
        }
        self.cache
            .remove(&net.name, &att.container_id, &att.ifname)?;
        Ok(())
    }

    /// CHECK: runs the chain in order with the cached result as prevResult.
    /// A no-op when the list says `disableCheck`; needs cniVersion 0.4.0.
    pub fn check(&self, net: &NetworkConfig, att: &Attachment) -> Result<(), ClientError> {
        validate_network(net)?;
        att.validate()?;
        if !net.version_at_least("0.4.0") {
            return Err(ClientError::Unsupported {
                network: net.name.clone(),
                command: "CHECK",
                needs: "0.4.0",
                has: net.cni_version.clone(),
            });
        }
        if net.disable_check {
            return Ok(());
        }
        let not_attached = || ClientError::NotAttached {
            network: net.name.clone(),
            container_id: att.container_id.clone(),
            ifname: att.ifname.clone(),
        };
        let entry = self
            .cache
            .read(&net.name, &att.container_id, &att.ifname)?
            .filter(|e| e.complete)
            .ok_or_else(not_attached)?;
        let prev = entry
            .result
            .and_then(|r| convert(&r, &net.cni_version, &net.name))
            .ok_or_else(not_attached)?;
        let mut att = att.clone();
        if att.netns.is_none() {
            att.netns = entry.netns;
        }
        if att.args.is_empty() {
            att.args = entry.args;
        }
        for (k, v) in entry.capability_args {
            att.capability_args.entry(k).or_insert(v);
        }
        for (i, p) in net.plugins.iter().enumerate() {
            let runner = self.resolve(net, p)?;
            self.call(net, i, &runner, Command::Check, &att, Some(&prev))?;
        }
        Ok(())
    }

    /// Whether the network can take ADDs (the runtime's NetworkReady): with
    /// cniVersion 1.1, STATUS of each plugin; before, every plugin found.
    pub fn status(&self, net: &NetworkConfig) -> Result<(), ClientError> {
        validate_network(net)?;
        let none = Attachment::default();
        for (i, p) in net.plugins.iter().enumerate() {
            let runner = self.resolve(net, p)?;
            if net.version_at_least("1.1.0") {
                let stdin = net.plugin_stdin_gc(i, None);
                if let Err(e) = self.exec(net, i, &runner, Command::Status, &none, stdin) {
                    return Err(self.explain_version(net, i, &runner, e));
                }
            }
        }
        Ok(())
    }

    /// GC: DEL of every cached attachment of `net` that is not in `valid`,
    /// then (cniVersion 1.1) GC of each plugin with the valid attachments,
    /// so that plugins free what they hold for containers that are gone.
    /// A no-op when the list says `disableGC`.
    pub fn gc(&self, net: &NetworkConfig, valid: &[Attachment]) -> Result<(), ClientError> {
        validate_network(net)?;
        if net.disable_gc {
            return Ok(());
        }
        self.cache.remove_stale_temporaries();
        let is_valid = |cid: &str, ifname: &str| {
            valid
                .iter()
                .any(|a| a.container_id == cid && a.ifname == ifname)
        };
        let mut errors = Vec::new();
        for entry in self.cache.list(Some(&net.name))? {
            if is_valid(&entry.container_id, &entry.ifname) {
                continue;
            }
            tracing::info!(
                network = %net.name,
                container = %entry.container_id,
                ifname = %entry.ifname,
                "GC: deleting a stale attachment"
            );
            let stale = Attachment::new(&entry.container_id, None, &entry.ifname);
            if let Err(e) = self.del(net, &stale) {
                errors.push(e);
            }
        }
        if net.version_at_least("1.1.0") {
            let list: Vec<Value> = valid
                .iter()
                .map(|a| serde_json::json!({"containerID": a.container_id, "ifname": a.ifname}))
                .collect();
            let list = Value::Array(list);
            let none = Attachment::default();
            for (i, p) in net.plugins.iter().enumerate() {
                let step = self.resolve(net, p).and_then(|runner| {
                    let stdin = net.plugin_stdin_gc(i, Some(&list));
                    self.exec(net, i, &runner, Command::Gc, &none, stdin)
                });
                if let Err(e) = step {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(several(&net.name, "GC", errors))
        }
    }

    /// The cached result of an attachment ADD completed, in the 1.x form.
    pub fn cached_result(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CniResult>, ClientError> {
        let Some(entry) = self.read_entry(network, container_id, ifname)? else {
            return Ok(None);
        };
        Ok(entry
            .result
            .filter(|_| entry.complete)
            .and_then(|r| CniResult::from_value(&r).ok()))
    }

    /// The config an attachment was added with.
    pub fn cached_config(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<NetworkConfig>, ClientError> {
        let Some(entry) = self.read_entry(network, container_id, ifname)? else {
            return Ok(None);
        };
        let origin = self.cache.path(network, container_id, ifname);
        Ok(Some(NetworkConfig::from_list_value(
            &entry.config,
            &origin.display().to_string(),
        )?))
    }

    fn read_entry(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CacheEntry>, ClientError> {
        // The names become a file name: refuse what could leave the dir.
        if !config::valid_name(network) {
            return Ok(None);
        }
        Attachment::new(container_id, None, ifname).validate()?;
        Ok(self.cache.read(network, container_id, ifname)?)
    }

    /// A plugin that predates the list's version answers a command it does
    /// not know with some unrelated complaint (a 1.0 plugin asked for
    /// STATUS misses CNI_CONTAINERID): replaces `e` with what VERSION says,
    /// when the plugin does not support the list's version.
    fn explain_version(
        &self,
        net: &NetworkConfig,
        i: usize,
        runner: &Runner,
        e: ClientError,
    ) -> ClientError {
        let ClientError::Plugin {
            network,
            plugin,
            index,
            command,
            ..
        } = &e
        else {
            return e;
        };
        let stdin = json!({"cniVersion": net.cni_version});
        let versions = self
            .exec(
                net,
                i,
                runner,
                Command::Version,
                &Attachment::default(),
                Some(stdin),
            )
            .ok()
            .flatten()
            .and_then(|v| {
                v.get("supportedVersions")?
                    .as_array()?
                    .iter()
                    .map(|s| s.as_str().map(str::to_string))
                    .collect::<Option<Vec<String>>>()
            });
        match versions {
            Some(vs) if !vs.contains(&net.cni_version) => ClientError::Plugin {
                network: network.clone(),
                plugin: plugin.clone(),
                index: *index,
                command,
                source: Box::new(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "plugin {plugin} supports CNI versions {}, not the list's {}",
                        vs.join(", "),
                        net.cni_version
                    ),
                )),
            },
            _ => e,
        }
    }

    /// Undoes a failed ADD: DEL of `ran` (the failed plugin and those
    /// before it) in reverse, with the last result the chain produced.
    fn roll_back(
        &self,
        net: &NetworkConfig,
        att: &Attachment,
        ran: &[Runner],
        prev: Option<Value>,
        mut entry: CacheEntry,
        failed: ClientError,
    ) -> ClientError {
        tracing::warn!(network = %net.name, container = %att.container_id, error = %failed,
            "ADD failed; undoing it");
        let mut rollback = Vec::new();
        for (i, runner) in ran.iter().enumerate().rev() {
            if let Err(e) = self.call(net, i, runner, Command::Del, att, prev.as_ref()) {
                rollback.push(e);
            }
        }
        if rollback.is_empty() {
            match self.cache.remove(&net.name, &att.container_id, &att.ifname) {
                Ok(()) => failed,
                Err(e) => ClientError::RollbackFailed {
                    failed: Box::new(failed),
                    rollback: vec![e.into()],
                },
            }
        } else {
            // Kept (incomplete) so that a DEL or GC finishes the undoing.
            entry.result = prev;
            entry.complete = false;
            if let Err(e) = self.cache.write(&entry) {
                rollback.push(e.into());
            }
            ClientError::RollbackFailed {
                failed: Box::new(failed),
                rollback,
            }
        }
    }

    /// DEL of every plugin, in reverse, going on past failures.
    fn del_chain(
        &self,
        net: &NetworkConfig,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Vec<ClientError> {
        let mut errors = Vec::new();
        for i in (0..net.plugins.len()).rev() {
            let step = self
                .resolve(net, &net.plugins[i])
                .and_then(|r| self.call(net, i, &r, Command::Del, att, prev));
            if let Err(e) = step {
                errors.push(e);
            }
        }
        errors
    }

    fn resolve(&self, net: &NetworkConfig, p: &PluginConfig) -> Result<Runner, ClientError> {
        if net.in_process
            && let Some(plugin) = self.builtin.and_then(|f| f(&p.plugin_type))
        {
            return Ok(Runner::Builtin(plugin));
        }
        invoke::find(&p.plugin_type, &self.plugin_dirs)
            .map(Runner::Exec)
            .map_err(|_| ClientError::PluginNotFound {
                network: net.name.clone(),
                plugin: p.plugin_type.clone(),
                dirs: self
                    .plugin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":"),
            })
    }

    /// ADD, DEL or CHECK of plugin `i`.
    fn call(
        &self,
        net: &NetworkConfig,
        i: usize,
        runner: &Runner,
        command: Command,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Option<Value>, ClientError> {
        let stdin = net.plugin_stdin(i, prev, &att.capability_args);
        self.exec(net, i, runner, command, att, stdin)
    }

    /// Runs one plugin; its stdout, parsed (None when empty).
    fn exec(
        &self,
        net: &NetworkConfig,
        i: usize,
        runner: &Runner,
        command: Command,
        att: &Attachment,
        stdin: Option<Value>,
    ) -> Result<Option<Value>, ClientError> {
        let plugin = net.plugins.get(i).map(|p| p.plugin_type.clone());
        let fail = |source: CniError| ClientError::Plugin {
            network: net.name.clone(),
            plugin: plugin.clone().unwrap_or_default(),
            index: i,
            command: command.as_str(),
            source: Box::new(source),
        };
        let Some(stdin) = stdin else {
            return Err(fail(CniError::new(
                code::INVALID_CONFIG,
                format!("the list has no plugin #{i}"),
            )));
        };
        let mut inv = Invocation {
            command,
            container_id: att.container_id.clone(),
            netns: att.netns.clone(),
            ifname: att.ifname.clone(),
            args: att.args.clone(),
            path: self.plugin_dirs.clone(),
            stdin: Vec::new(),
        };
        let started = std::time::Instant::now();
        let out = match runner {
            Runner::Exec(exe) => invoke::run(exe, &inv, &stdin),
            Runner::Builtin(p) => {
                inv.stdin = serde_json::to_vec(&stdin).map_err(|e| {
                    fail(
                        CniError::new(code::IO_FAILURE, "cannot encode the config")
                            .with_details(e.to_string()),
                    )
                })?;
                read_outcome(protocol::run(p.as_ref(), &inv))
            }
        };
        tracing::debug!(
            network = %net.name,
            plugin = plugin.as_deref().unwrap_or_default(),
            command = command.as_str(),
            container = %att.container_id,
            in_process = matches!(runner, Runner::Builtin(_)),
            elapsed_us = started.elapsed().as_micros() as u64,
            ok = out.is_ok(),
            "CNI plugin ran"
        );
        out.map_err(fail)
    }

    /// An ADD's output, and the same as the list's version writes it.
    fn decode_result(
        &self,
        net: &NetworkConfig,
        i: usize,
        out: Option<Value>,
    ) -> Result<(CniResult, Value), ClientError> {
        let fail = |source: CniError| ClientError::Plugin {
            network: net.name.clone(),
            plugin: net.plugins[i].plugin_type.clone(),
            index: i,
            command: "ADD",
            source: Box::new(source),
        };
        let v = out.ok_or_else(|| {
            fail(CniError::new(
                code::DECODE_FAILURE,
                "the plugin printed no result for ADD",
            ))
        })?;
        let mut r = CniResult::from_value(&v).map_err(fail)?;
        let v = r.to_value(&net.cni_version).map_err(fail)?;
        r.cni_version = net.cni_version.clone();
        Ok((r, v))
    }
}

/// An in-process plugin's output, read exactly as an executable's.
fn read_outcome(o: protocol::Outcome) -> Result<Option<Value>, CniError> {
    let text = String::from_utf8_lossy(&o.stdout);
    if o.exit_code != 0 {
        return Err(
            serde_json::from_slice::<CniError>(&o.stdout).unwrap_or_else(|_| {
                CniError::new(
                    code::IO_FAILURE,
                    format!("in-process plugin failed (exit code {})", o.exit_code),
                )
                .with_details(format!("stdout: {}", text.trim()))
            }),
        );
    }
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_slice(&o.stdout).map(Some).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            "in-process plugin printed no JSON result",
        )
        .with_details(e.to_string())
    })
}

/// A cached result in version `version`; None (with a warning) if it no
/// longer decodes.
fn convert(v: &Value, version: &str, network: &str) -> Option<Value> {
    match CniResult::from_value(v).and_then(|r| r.to_value(version)) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(network, error = %e, "ignoring a cached result that does not decode");
            None
        }
    }
}

fn validate_network(net: &NetworkConfig) -> Result<(), ClientError> {
    if !config::valid_name(&net.name) {
        return Err(ClientError::InvalidName {
            what: "network name",
            value: net.name.clone(),
            reason: "letters, digits, '_', '.', '-', starting with a letter or digit",
        });
    }
    if net.plugins.is_empty() {
        return Err(empty_list(net));
    }
    Ok(())
}

fn empty_list(net: &NetworkConfig) -> ClientError {
    ClientError::Config(ConfigError::Invalid {
        origin: net.name.clone(),
        reason: "\"plugins\" is empty".into(),
    })
}

fn several(network: &str, command: &'static str, mut errors: Vec<ClientError>) -> ClientError {
    if errors.len() == 1
        && let Some(e) = errors.pop()
    {
        return e;
    }
    ClientError::Several {
        network: network.to_string(),
        command,
        errors,
    }
}

#[cfg(test)]
mod tests;
