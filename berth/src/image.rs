//! `berth image`: pull, list, inspect, remove, import, export and prune images
//! in the node's image store.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use berth_runtime::config::RuntimeConfig;
use berth_runtime::image::digest::Digest;
use berth_runtime::image::meta::ImageRecord;
use berth_runtime::image::pull::{Progress, PullOptions};
use berth_runtime::image::registry::{Credentials, Platform};
use berth_runtime::image::store::ImageStore;
use clap::{Parser, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(Parser)]
pub struct Args {
    /// The image store's directory.
    #[arg(
        long,
        global = true,
        env = "BERTH_ROOT",
        default_value = "/var/lib/berth"
    )]
    root: PathBuf,
    /// berth's runtime config (registry mirrors, plain-http hosts, credentials);
    /// a missing file means the defaults.
    #[arg(long, global = true, default_value = "/etc/berth/runtime.toml")]
    config: PathBuf,
    /// Log at debug level.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pull an image from its registry (or a configured mirror).
    Pull {
        image: String,
        /// Credentials as USER:PASSWORD (else the config's, else anonymous).
        #[arg(long)]
        creds: Option<String>,
        /// OS/ARCH[/VARIANT] to pick from a multi-platform image (default: this host's).
        #[arg(long)]
        platform: Option<String>,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        /// Only image IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show an image's record and config as JSON.
    Inspect { image: String },
    /// Remove images (all tags of each), then their unused blobs and layers.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Import OCI-layout or `docker save` tarballs.
    Import {
        files: Vec<PathBuf>,
        /// Also import every *.tar of this directory not imported before.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Export images to an OCI-layout tarball (with docker's manifest.json).
    Export {
        #[arg(short, long)]
        output: PathBuf,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Delete blobs and layers that no image uses.
    Prune,
    /// Space the image store takes (blobs and unpacked layers).
    Df,
    /// Make a writable overlay root filesystem of an image, named NAME, and
    /// print where it is mounted (for a bundle's rootfs).
    Mount { image: String, name: String },
    /// Unmount and delete what `mount` made.
    Unmount { name: String },
}

pub fn main(args: Args) -> i32 {
    crate::log::init(None, crate::log::Format::Text, args.debug);
    match run(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("berth image: {e:#}");
            1
        }
    }
}

fn open(args: &Args) -> Result<ImageStore> {
    let config = if args.config.exists() {
        RuntimeConfig::load(&args.config)?
    } else {
        RuntimeConfig::default()
    };
    ImageStore::open(&args.root, &config.registry)
        .with_context(|| format!("opening the image store at {}", args.root.display()))
}

fn run(args: Args) -> Result<()> {
    let store = open(&args)?;
    match args.command {
        Command::Pull {
            image,
            creds,
            platform,
        } => {
            let credentials = match creds {
                Some(c) => {
                    let (user, pass) =
                        c.split_once(':').context("--creds must be USER:PASSWORD")?;
                    Some(Credentials::Basic {
                        username: user.to_string(),
                        password: pass.to_string(),
                    })
                }
                None => None,
            };
            let platform = platform.map(|p| p.parse::<Platform>()).transpose()?;
            let opts = PullOptions {
                credentials,
                platform,
            };
            let progress: Arc<dyn Progress> = if std::io::stderr().is_terminal() {
                Arc::new(Bars::default())
            } else {
                Arc::new(Lines)
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let image = rt.block_on(store.pull(&image, &opts, progress))?;
            println!("{}", image.id);
        }
        Command::Ls { quiet } => {
            let images = store.list()?;
            if quiet {
                for i in images {
                    println!("{}", i.id);
                }
                return Ok(());
            }
            println!(
                "{:<50} {:<20} {:<15} {:>10}",
                "IMAGE", "TAG", "IMAGE ID", "SIZE"
            );
            for i in &images {
                let id = &i.id.hex()[..12];
                let size = human(i.size);
                if i.repo_tags.is_empty() {
                    let name = i
                        .repo_digests
                        .first()
                        .and_then(|d| d.split_once('@'))
                        .map(|(n, _)| n)
                        .unwrap_or("<none>");
                    println!("{name:<50} {:<20} {id:<15} {size:>10}", "<none>");
                }
                for t in &i.repo_tags {
                    let (name, tag) = t.rsplit_once(':').unwrap_or((t, ""));
                    println!("{name:<50} {tag:<20} {id:<15} {size:>10}");
                }
            }
        }
        Command::Inspect { image } => {
            let Some(record) = store.status(&image)? else {
                bail!("image {image:?} not found");
            };
            let config = store.config(&record)?;
            let out = serde_json::json!({"image": record, "config": config});
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Command::Rm { images } => {
            for i in images {
                let r = store.remove(&i)?;
                println!("deleted {}", r.id);
            }
        }
        Command::Import { files, dir } => {
            if files.is_empty() && dir.is_none() {
                bail!("name tarballs to import, or --dir");
            }
            let mut imported: Vec<ImageRecord> = Vec::new();
            for f in &files {
                imported.extend(
                    store
                        .import(f)
                        .with_context(|| format!("importing {}", f.display()))?,
                );
            }
            if let Some(d) = &dir {
                imported.extend(store.preload(d)?);
            }
            for i in imported {
                let names = if i.repo_tags.is_empty() {
                    "<none>".to_string()
                } else {
                    i.repo_tags.join(", ")
                };
                println!("{} {names}", i.id);
            }
        }
        Command::Export { output, images } => {
            store.export(&images, &output)?;
            println!("exported {} image(s) to {}", images.len(), output.display());
        }
        Command::Mount { image, name } => {
            let root = store.prepare_rootfs(&image, &name)?;
            println!("{}", root.display());
        }
        Command::Unmount { name } => {
            store.remove_rootfs(&name)?;
        }
        Command::Df => {
            let u = store.usage()?;
            println!(
                "{} in {} inodes at {}",
                human(u.bytes),
                u.inodes,
                args.root.display()
            );
        }
        Command::Prune => {
            let r = store.gc()?;
            if r.skipped {
                println!("a pull or import is running; nothing pruned");
            } else {
                println!(
                    "deleted {} blob(s) ({}) and {} layer(s)",
                    r.blobs,
                    human(r.bytes),
                    r.layers
                );
            }
        }
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

fn short(d: &Digest) -> &str {
    &d.hex()[..12]
}

/// A progress bar per layer, on a terminal.
#[derive(Default)]
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Progress for Bars {
    fn resolved(&self, image: &str, layers: &[(Digest, u64)]) {
        let _ = self.multi.println(format!("pulling {image}"));
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        if let Ok(mut bars) = self.bars.lock() {
            for (d, size) in layers {
                let b = self.multi.add(ProgressBar::new(*size));
                b.set_style(style.clone());
                b.set_prefix(short(d).to_string());
                bars.insert(d.clone(), b);
            }
        }
    }

    fn layer_bytes(&self, blob: &Digest, done: u64) {
        if let Some(b) = self.bars.lock().ok().and_then(|b| b.get(blob).cloned()) {
            b.set_position(done);
        }
    }

    fn layer_done(&self, blob: &Digest, cached: bool) {
        if let Some(b) = self.bars.lock().ok().and_then(|b| b.get(blob).cloned()) {
            if let Some(len) = b.length() {
                b.set_position(len);
            }
            b.finish_with_message(if cached { "exists" } else { "done" });
        }
    }
}

/// One log line per layer, when stderr is not a terminal.
struct Lines;

impl Progress for Lines {
    fn resolved(&self, image: &str, layers: &[(Digest, u64)]) {
        let total: u64 = layers.iter().map(|(_, s)| s).sum();
        eprintln!(
            "pulling {image}: {} layer(s), {}",
            layers.len(),
            human(total)
        );
    }

    fn layer_done(&self, blob: &Digest, cached: bool) {
        eprintln!(
            "layer {}: {}",
            short(blob),
            if cached { "exists" } else { "done" }
        );
    }
}
