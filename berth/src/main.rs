//! `berth`: one binary, a subcommand per component. Invoked as `berth-oci` it is
//! the runc-compatible OCI runtime; invoked as `bridge`, `host-local`, ... (the
//! links `berth cni install` makes) it is that CNI plugin.

mod cni;
mod daemon;
mod image;
mod log;
mod node;
mod oci;
mod pods;
mod runtime;

use std::os::fd::AsFd;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "berth: a Kubernetes node stack")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The runc-compatible OCI runtime (also installed as `berth-oci`).
    Oci(Box<oci::Args>),
    /// Images: pull, list, inspect, remove, import, export, prune.
    Image(image::Args),
    /// CNI plugins: install them into a CNI bin dir.
    Cni(cni::Args),
    /// The CRI daemon: serves the kubelet's image and runtime services on a unix socket.
    Runtime(runtime::Args),
    /// The kubelet, standalone: runs the static pods of a manifest directory on a CRI runtime.
    Node(Box<node::Args>),
    /// The node's pods, from the kubelet API (as `kubectl get pods`).
    Pods(pods::PodsArgs),
    /// A container's logs, from the kubelet API (as `kubectl logs`).
    Logs(pods::LogsArgs),
    /// Runs a command in a container, through the kubelet API (as `kubectl exec`).
    Exec(pods::ExecArgs),
}

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let code = if name == "berth-oci" {
        oci::main(<oci::Args as Parser>::parse())
    } else if berth_cni::plugins::NAMES.contains(&name.as_str()) {
        berth_cni::exec::plugin_main(&name)
    } else if std::env::args().nth(1).as_deref() == Some(berth_runtime::sandbox::pidns::SUBCOMMAND)
    {
        // The init of a pod's shared pid namespace (started by the daemon).
        match std::env::args_os().nth(2) {
            Some(p) => berth_runtime::sandbox::pidns::init_main(std::path::Path::new(&p)),
            None => 2,
        }
    } else if std::env::args().nth(1).as_deref() == Some(berth_runtime::forkserver::SUBCOMMAND) {
        // The daemon's fork server; its stdin is the daemon's socket.
        berth_runtime::forkserver::serve(std::io::stdin().as_fd(), run_forked)
    } else {
        let matches = Cli::command().get_matches();
        let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        match cli.command {
            Command::Oci(args) => oci::main(*args),
            Command::Image(args) => image::main(args),
            Command::Cni(args) => cni::main(args),
            Command::Runtime(args) => runtime::main(args),
            Command::Node(args) => node::main(*args, matches.subcommand_matches("node")),
            Command::Pods(args) => pods::pods_main(args),
            Command::Logs(args) => pods::logs_main(args),
            Command::Exec(args) => pods::exec_main(args),
        }
    };
    std::process::exit(code);
}

/// A command line the fork server received, run in its forked child as if
/// `berth` had been exec'd with it. Only `berth oci` commands are served.
fn run_forked(args: Vec<std::ffi::OsString>) -> i32 {
    let argv = std::iter::once(std::ffi::OsString::from("berth")).chain(args);
    let code = match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Oci(args),
        }) => oci::main(*args),
        Ok(_) => {
            eprintln!("berth forkserver: only `berth oci` commands are served");
            2
        }
        Err(e) => {
            let _ = e.print();
            e.exit_code()
        }
    };
    let _ = std::io::Write::flush(&mut std::io::stdout());
    code
}
