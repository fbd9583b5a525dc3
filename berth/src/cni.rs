//! `berth cni`: installing berth's CNI plugins into a CNI bin dir. The
//! plugins are this executable: invoked under a plugin's name (a symlink in
//! the bin dir) it runs that plugin (see `main`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use berth_cni::plugins::NAMES;
use clap::{Parser, Subcommand};

#[derive(Parser)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Link every plugin name (bridge, host-local, ...) in DIR to this
    /// executable; links already there are kept or repointed, other files
    /// are never replaced.
    Install {
        /// The CNI bin dir (as in containerd's `bin_dir`), created if missing.
        #[arg(long, default_value = "/opt/cni/bin")]
        dir: PathBuf,
    },
}

pub fn main(args: Args) -> i32 {
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("berth cni: {e:#}");
            1
        }
    }
}

fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Install { dir } => {
            let exe = std::env::current_exe()
                .and_then(fs::canonicalize)
                .context("finding this executable")?;
            for line in install(&dir, &exe)? {
                println!("{line}");
            }
            Ok(())
        }
    }
}

/// Makes `dir/<name>` a symlink to `exe` for every plugin. Checks every
/// name before changing any, so a refusal leaves the dir as it was.
fn install(dir: &Path, exe: &Path) -> Result<Vec<String>> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut todo = Vec::new();
    for name in NAMES {
        let link = dir.join(name);
        match fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => {
                let current = fs::read_link(&link)
                    .with_context(|| format!("reading the link {}", link.display()))?;
                if current != exe {
                    todo.push((link, true));
                }
            }
            Ok(_) => bail!(
                "{} exists and is not a symlink: refusing to replace it (remove it to install berth's {name})",
                link.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => todo.push((link, false)),
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", link.display())),
        }
    }
    let mut done = Vec::new();
    for (link, replace) in todo {
        if replace {
            // A new link renamed over the old one: the name never disappears
            // for a runtime running the plugin meanwhile.
            let name = link.file_name().unwrap_or_default().to_string_lossy();
            let tmp = dir.join(format!(".{name}.berth-install"));
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(exe, &tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            fs::rename(&tmp, &link).with_context(|| format!("replacing {}", link.display()))?;
        } else {
            std::os::unix::fs::symlink(exe, &link)
                .with_context(|| format!("creating {}", link.display()))?;
        }
        done.push(format!("{} -> {}", link.display(), exe.display()));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_is_idempotent_repoints_and_refuses_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bin");
        let exe = Path::new("/usr/local/bin/berth");
        assert_eq!(install(&dir, exe).unwrap().len(), NAMES.len());
        assert!(install(&dir, exe).unwrap().is_empty());
        for n in NAMES {
            assert_eq!(fs::read_link(dir.join(n)).unwrap(), exe);
        }
        let other = Path::new("/opt/berth/berth");
        assert_eq!(install(&dir, other).unwrap().len(), NAMES.len());
        assert_eq!(fs::read_link(dir.join(NAMES[0])).unwrap(), other);

        fs::remove_file(dir.join(NAMES[0])).unwrap();
        fs::write(dir.join(NAMES[0]), "reference plugin").unwrap();
        let e = install(&dir, exe).unwrap_err();
        assert!(e.to_string().contains("not a symlink"), "{e}");
        assert_eq!(fs::read(dir.join(NAMES[0])).unwrap(), b"reference plugin");
        // Nothing else was repointed either.
        assert_eq!(fs::read_link(dir.join(NAMES[1])).unwrap(), other);
    }
}
