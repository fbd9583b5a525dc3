//! The standard test images, built once per test process (in memory) and
//! pushed on demand, and bad images for the bad-input tests.
//!
//! | function | what |
//! |---|---|
//! | [`busybox`] | OCI; Debian's static busybox in 4 layers: base (busybox, dirs), applet symlinks, /etc and /home (uncompressed, with a hard link and an xattr), changes (a whiteout deleting `/etc/berth-remove-me`, an opaque `/opt/stale`) |
//! | [`busybox_user`] | the same layers, `User: "1000:1000"`, WorkingDir `/home/user` |
//! | [`busybox_docker`] | the same content, Docker schema2, all gzip |
//! | [`testapp`] | scratch + the static test program; Entrypoint `/testapp`, serving HTTP 8080, TCP 9000, UDP 9001 |
//! | [`multiarch`], [`multiarch_docker`] | an OCI index / Docker list: this machine's platform (busybox + `/etc/berth-platform`) and two foreign ones with only `/etc/berth-platform`, foreign first; the OCI one also has a buildx-style attestation manifest (unknown/unknown) |
//! | [`zstd()`] | busybox layers plus a zstd layer (`/etc/berth-zstd`) |
//! | [`big`] | ~100 MB in several gzip layers of random data, for the pull benchmark (built on demand only) |
//!
//! [`push_standard`] pushes all but `big` under the names of
//! [`STANDARD_NAMES`]. Bad input: [`evil`], [`push_wrong_digest`],
//! [`push_truncated_blob`], [`push_huge_manifest`] (under the registry's
//! 4 MiB limit) and [`serve_huge_manifest`] (any size, through a
//! [`RegistryProxy`]), [`unknown_layer_type`], [`unknown_index_entry_type`],
//! [`serve_unknown_manifest_type`].

use std::collections::BTreeMap;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, ensure};

use crate::image::{DEFAULT_MTIME, Entry, Kind, oci_arch, read_tree};
use crate::oci::{
    Blob, Compression, EvilLayer, Format, Image, ImageConfig, Index, IndexEntry, Layer,
    LayerBuilder, Platform, evil_layer, huge_manifest,
};
use crate::registry::Registry;
use crate::registry_proxy::{Fault, RegistryProxy, Rule};
use crate::rootfs::{USER_NAME, USER_UID};

/// A file the busybox image's last layer deletes with a whiteout.
pub const REMOVED_FILE: &str = "etc/berth-remove-me";
/// A directory the last layer makes opaque: only `c` remains in it.
pub const OPAQUE_DIR: &str = "opt/stale";
/// Written by the last busybox layer.
pub const RELEASE_FILE: &str = "etc/berth-release";
pub const RELEASE_CONTENT: &str = "berth busybox test image\n";
/// A file with an extended attribute `user.berth` = "test".
pub const XATTR_FILE: &str = "etc/berth-xattr";
/// `etc/motd` and its hard link.
pub const HARDLINK: (&str, &str) = ("etc/motd-link", "etc/motd");
/// Names each platform of [`multiarch`] writes its platform to.
pub const PLATFORM_FILE: &str = "etc/berth-platform";
/// Written by the zstd layer of [`zstd()`].
pub const ZSTD_FILE: &str = "etc/berth-zstd";
pub const ZSTD_CONTENT: &str = "from a zstd layer\n";

/// Where [`push_standard`] puts each image.
pub const STANDARD_NAMES: [&str; 8] = [
    "busybox:latest",
    // Where a mirror of docker.io is asked for `busybox`.
    "library/busybox:latest",
    "busybox:user",
    "busybox:docker",
    "testapp:latest",
    "multiarch:latest",
    "multiarch:docker",
    "zstd:latest",
];

fn cached<T>(
    cell: &'static OnceLock<Result<T, String>>,
    what: &str,
    build: impl FnOnce() -> Result<T>,
) -> Result<&'static T> {
    cell.get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("building the {what} image: {e}"))
}

/// The busybox content as four layer builders (see the module doc).
fn busybox_layers() -> Result<&'static [LayerBuilder; 4]> {
    static CELL: OnceLock<Result<[LayerBuilder; 4], String>> = OnceLock::new();
    cached(&CELL, "busybox", || {
        let template = crate::rootfs::template()?;
        let mut base = LayerBuilder::new();
        let mut applets = LayerBuilder::new();
        let mut etc = LayerBuilder::new();
        for mut e in read_tree(template, "")? {
            // The template is fresh on every run: fixed times give the
            // same digests every time.
            e.mtime = DEFAULT_MTIME;
            let is_applet =
                e.path.starts_with("bin/") && matches!(&e.kind, Kind::Symlink(t) if t == "busybox");
            if is_applet {
                applets = applets.entry(e);
            } else if e.path == "etc" || e.path.starts_with("etc/") || e.path.starts_with("home/") {
                etc = etc.entry(e);
            } else {
                base = base.entry(e);
            }
        }
        base = base.dir("opt").dir(OPAQUE_DIR);
        etc = etc
            .file(REMOVED_FILE, "deleted by a whiteout in the next layer\n")
            .file("etc/motd", "welcome to the berth test busybox\n")
            .hardlink(HARDLINK.0, HARDLINK.1)
            .entry(Entry::file(XATTR_FILE, "has an xattr\n").xattr("user.berth", "test"))
            .entry(
                Entry::file(&format!("home/{USER_NAME}/.profile"), "export PS1='$ '\n")
                    .owner(USER_UID, USER_UID)
                    .mode(0o600),
            )
            .file(&format!("{OPAQUE_DIR}/a"), "hidden by the opaque dir\n")
            .file(&format!("{OPAQUE_DIR}/b"), "hidden by the opaque dir\n");
        let changes = LayerBuilder::new()
            .whiteout(REMOVED_FILE)
            .opaque(OPAQUE_DIR)
            .file(
                &format!("{OPAQUE_DIR}/c"),
                "the only file left in the opaque dir\n",
            )
            .file(RELEASE_FILE, RELEASE_CONTENT);
        Ok([base, applets, etc, changes])
    })
}

pub fn busybox_config() -> ImageConfig {
    ImageConfig {
        env: vec![crate::spec::DEFAULT_PATH.to_string()],
        cmd: Some(vec!["sh".into()]),
        working_dir: Some("/".into()),
        labels: BTreeMap::from([(
            "org.opencontainers.image.title".to_string(),
            "berth test busybox".to_string(),
        )]),
        history: vec![
            "busybox-static and base directories".into(),
            "busybox applet symlinks".into(),
            "/etc and /home".into(),
            "a whiteout, an opaque dir, /etc/berth-release".into(),
        ],
        ..ImageConfig::default()
    }
}

/// The busybox layers with the compression of each (etc uncompressed).
fn busybox_built(all_gzip: bool) -> Result<Vec<Layer>> {
    let [base, applets, etc, changes] = busybox_layers()?;
    let etc_c = if all_gzip {
        Compression::Gzip
    } else {
        Compression::None
    };
    Ok(vec![
        base.build(Compression::Gzip)?,
        applets.build(Compression::Gzip)?,
        etc.build(etc_c)?,
        changes.build(Compression::Gzip)?,
    ])
}

/// OCI busybox (see the module doc).
pub fn busybox() -> Result<&'static Image> {
    static CELL: OnceLock<Result<Image, String>> = OnceLock::new();
    cached(&CELL, "busybox", || {
        Image::new(Format::Oci, &busybox_config(), busybox_built(false)?)
    })
}

/// busybox running as 1000:1000 in /home/user.
pub fn busybox_user() -> Result<&'static Image> {
    static CELL: OnceLock<Result<Image, String>> = OnceLock::new();
    cached(&CELL, "busybox:user", || {
        let config = ImageConfig {
            user: Some(format!("{USER_UID}:{USER_UID}")),
            working_dir: Some(format!("/home/{USER_NAME}")),
            env: vec![
                crate::spec::DEFAULT_PATH.to_string(),
                format!("HOME=/home/{USER_NAME}"),
            ],
            ..busybox_config()
        };
        Image::new(Format::Oci, &config, busybox()?.layers.clone())
    })
}

/// busybox in Docker schema2 media types, all layers gzip.
pub fn busybox_docker() -> Result<&'static Image> {
    static CELL: OnceLock<Result<Image, String>> = OnceLock::new();
    cached(&CELL, "busybox:docker", || {
        Image::new(Format::Docker, &busybox_config(), busybox_built(true)?)
    })
}

/// The config of the testapp image.
pub fn testapp_config() -> ImageConfig {
    use crate::testapp::{HTTP_PORT, TCP_PORT, UDP_PORT};
    ImageConfig {
        entrypoint: Some(vec!["/testapp".into()]),
        cmd: Some(
            [
                "serve",
                "--http",
                &HTTP_PORT.to_string(),
                "--tcp",
                &TCP_PORT.to_string(),
                "--udp",
                &UDP_PORT.to_string(),
            ]
            .map(String::from)
            .to_vec(),
        ),
        env: vec!["PATH=/".into(), "TESTAPP_IMAGE=1".into()],
        working_dir: Some("/".into()),
        exposed_ports: vec![
            format!("{HTTP_PORT}/tcp"),
            format!("{TCP_PORT}/tcp"),
            format!("{UDP_PORT}/udp"),
        ],
        volumes: vec!["/data".into()],
        stop_signal: Some("SIGTERM".into()),
        labels: BTreeMap::from([(
            "org.opencontainers.image.title".to_string(),
            "berth testapp".to_string(),
        )]),
        history: vec!["the static testapp".into()],
        ..ImageConfig::default()
    }
}

/// Scratch plus the static test program (and a passwd for user names).
pub fn testapp() -> Result<&'static Image> {
    static CELL: OnceLock<Result<Image, String>> = OnceLock::new();
    cached(&CELL, "testapp", || {
        let bin = std::fs::read(crate::testapp::binary()?)?;
        let layer = LayerBuilder::new()
            .exec("testapp", bin)
            .dir("etc")
            .file(
                "etc/passwd",
                format!(
                    "root:x:0:0:root:/:/testapp\n{USER_NAME}:x:{USER_UID}:{USER_UID}::/:/testapp\n"
                ),
            )
            .file(
                "etc/group",
                format!("root:x:0:\n{USER_NAME}:x:{USER_UID}:\n"),
            )
            .entry(Entry::dir("tmp").mode(0o1777))
            .dir("data")
            .build(Compression::Gzip)?;
        Image::new(Format::Oci, &testapp_config(), vec![layer])
    })
}

/// This machine's platform and two foreign ones.
fn platforms() -> [Platform; 3] {
    let native = ImageConfig::default().platform();
    let foreign_arm = Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: Some("v8".into()),
    };
    let foreign_amd = Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    };
    let foreign = if oci_arch() == "arm64" {
        foreign_amd
    } else {
        foreign_arm
    };
    let arm7 = Platform {
        os: "linux".into(),
        architecture: "arm".into(),
        variant: Some("v7".into()),
    };
    [native, foreign, arm7]
}

fn platform_image(format: Format, p: &Platform, native: bool) -> Result<Image> {
    let marker = LayerBuilder::new()
        .dir("etc")
        .file(PLATFORM_FILE, format!("{p}\n"))
        .build(Compression::Gzip)?;
    let config = ImageConfig {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone(),
        ..busybox_config()
    };
    let mut layers = if native {
        busybox_built(format == Format::Docker)?
    } else {
        Vec::new()
    };
    layers.push(marker);
    Image::new(format, &config, layers)
}

fn multiarch_index(format: Format) -> Result<Index> {
    let [native, foreign, arm7] = platforms();
    let native_img = platform_image(format, &native, true)?;
    let mut entries: Vec<IndexEntry> = vec![
        platform_image(format, &foreign, false)?.into(),
        platform_image(format, &arm7, false)?.into(),
    ];
    let native_digest = native_img.digest().to_string();
    entries.push(native_img.into());
    if format == Format::Oci {
        // What `docker buildx` adds: a manifest for unknown/unknown that
        // clients must not pick.
        let statement = Layer::from_tar(
            br#"{"_type":"https://in-toto.io/Statement/v0.1"}"#,
            Compression::None,
        )?
        .with_media_type("application/vnd.in-toto+json");
        let config = ImageConfig {
            os: "unknown".into(),
            architecture: "unknown".into(),
            ..ImageConfig::default()
        };
        entries.push(IndexEntry {
            image: Image::new(Format::Oci, &config, vec![statement])?,
            annotations: BTreeMap::from([
                (
                    "vnd.docker.reference.type".to_string(),
                    "attestation-manifest".to_string(),
                ),
                ("vnd.docker.reference.digest".to_string(), native_digest),
            ]),
            media_type: None,
        });
    }
    Index::with_entries(format, entries)
}

/// OCI index: native platform (runnable busybox), a foreign one first.
pub fn multiarch() -> Result<&'static Index> {
    static CELL: OnceLock<Result<Index, String>> = OnceLock::new();
    cached(&CELL, "multiarch", || multiarch_index(Format::Oci))
}

/// The same as a Docker manifest list (no attestation).
pub fn multiarch_docker() -> Result<&'static Index> {
    static CELL: OnceLock<Result<Index, String>> = OnceLock::new();
    cached(&CELL, "multiarch:docker", || {
        multiarch_index(Format::Docker)
    })
}

/// busybox plus a zstd layer.
pub fn zstd() -> Result<&'static Image> {
    static CELL: OnceLock<Result<Image, String>> = OnceLock::new();
    cached(&CELL, "zstd", || {
        let text: String = (0..8192)
            .map(|i| format!("line {i} of a file in a zstd layer\n"))
            .collect();
        let z = LayerBuilder::new()
            .dir("etc")
            .file(ZSTD_FILE, ZSTD_CONTENT)
            .dir("usr/share")
            .file("usr/share/berth-zstd.txt", text)
            .build(Compression::Zstd)?;
        let mut layers = busybox()?.layers.clone();
        layers.push(z);
        Image::new(Format::Oci, &busybox_config(), layers)
    })
}

/// Deterministic incompressible bytes (xorshift64*).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Size and layout of [`big`].
pub const BIG_LAYERS: usize = 5;
pub const BIG_FILES_PER_LAYER: usize = 10;
pub const BIG_FILE_SIZE: usize = 2 * 1024 * 1024;

/// busybox plus [`BIG_LAYERS`] gzip layers of [`BIG_FILES_PER_LAYER`] random
/// files of [`BIG_FILE_SIZE`] bytes: about 100 MB to download and unpack.
/// Built on demand (a few seconds), layers in parallel.
pub fn big() -> Result<&'static Image> {
    static CELL: OnceLock<Result<Image, String>> = OnceLock::new();
    cached(&CELL, "big", || {
        let layers = std::thread::scope(|s| {
            let handles: Vec<_> = (0..BIG_LAYERS)
                .map(|l| {
                    s.spawn(move || {
                        let mut b = LayerBuilder::new().level(0).dir("data");
                        let dir = format!("data/layer{l}");
                        b = b.dir(&dir);
                        for f in 0..BIG_FILES_PER_LAYER {
                            let seed = (l * 1000 + f) as u64 + 1;
                            b = b.file(
                                &format!("{dir}/file{f}.bin"),
                                random_bytes(seed, BIG_FILE_SIZE),
                            );
                        }
                        b.build(Compression::Gzip)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow!("a big-layer thread panicked"))?
                })
                .collect::<Result<Vec<Layer>>>()
        })?;
        let mut all = busybox()?.layers.clone();
        all.extend(layers);
        Image::new(Format::Oci, &busybox_config(), all)
    })
}

/// Pushes every standard image except [`big`] to `reg` under
/// [`STANDARD_NAMES`].
pub fn push_standard(reg: &Registry) -> Result<()> {
    let client = reg.client();
    client.push("busybox", "latest", busybox()?)?;
    client.push("library/busybox", "latest", busybox()?)?;
    client.push("busybox", "user", busybox_user()?)?;
    client.push("busybox", "docker", busybox_docker()?)?;
    client.push("testapp", "latest", testapp()?)?;
    client.push("multiarch", "latest", multiarch()?)?;
    client.push("multiarch", "docker", multiarch_docker()?)?;
    client.push("zstd", "latest", zstd()?)
}

/// A small base layer for the bad images (unique per `marker`, so the bad
/// images never share a blob with the good ones).
fn small_layer(marker: &str) -> Result<Layer> {
    LayerBuilder::new()
        .dir("etc")
        .file("etc/berth-marker", format!("{marker}\n"))
        .build(Compression::Gzip)
}

/// A base layer and then an evil layer (see [`EvilLayer`]).
pub fn evil(kind: EvilLayer) -> Result<Image> {
    let layers = vec![
        small_layer(&format!("evil {kind:?}"))?,
        evil_layer(kind, Compression::Gzip)?,
    ];
    Image::new(Format::Oci, &busybox_config(), layers)
}

/// A base layer and then a layer whose tar is cut short (see
/// [`crate::oci::truncated_tar_layer`]); every digest matches.
pub fn truncated_tar() -> Result<Image> {
    let layers = vec![
        small_layer("truncated tar")?,
        crate::oci::truncated_tar_layer(Compression::Gzip)?,
    ];
    Image::new(Format::Oci, &busybox_config(), layers)
}

/// What a bad push left in the registry.
#[derive(Debug)]
pub struct BadImage {
    /// The image as its manifest describes it.
    pub image: Image,
    /// The digest of the blob that does not match (or is cut short).
    pub bad_digest: String,
}

/// Pushes `repo:tag`, an image whose second layer blob, as served, does not
/// match its digest (same size, different bytes).
pub fn push_wrong_digest(reg: &Registry, repo: &str, tag: &str) -> Result<BadImage> {
    push_corrupted(reg, repo, tag, "wrong digest", |data| {
        let mut bad = data.to_vec();
        for b in bad.iter_mut().skip(data.len() / 2).take(16) {
            *b ^= 0xff;
        }
        bad
    })
}

/// Pushes `repo:tag`, an image whose second layer blob, as served, is only
/// the first half of what its digest and size describe.
pub fn push_truncated_blob(reg: &Registry, repo: &str, tag: &str) -> Result<BadImage> {
    push_corrupted(reg, repo, tag, "truncated", |data| {
        data[..data.len() / 2].to_vec()
    })
}

fn push_corrupted(
    reg: &Registry,
    repo: &str,
    tag: &str,
    what: &str,
    corrupt: impl Fn(&[u8]) -> Vec<u8>,
) -> Result<BadImage> {
    let marker = format!("{what} {repo}:{tag}");
    let victim = LayerBuilder::new()
        .dir("data")
        .file(
            "data/payload",
            random_bytes(marker.len() as u64 + 7, 64 * 1024),
        )
        .file("data/marker", marker.clone())
        .build(Compression::Gzip)?;
    let image = Image::new(
        Format::Oci,
        &busybox_config(),
        vec![small_layer(&marker)?, victim],
    )?;
    let client = reg.client();
    client.push_blob(repo, &image.config)?;
    client.push_blob(repo, &image.layer_blobs[0])?;
    let bad = &image.layer_blobs[1];
    reg.put_raw_blob(repo, &bad.digest, &corrupt(&bad.data))
        .with_context(|| format!("writing the {what} blob"))?;
    client.put_manifest(repo, tag, &image.manifest)?;
    Ok(BadImage {
        bad_digest: bad.digest.clone(),
        image,
    })
}

/// The registry neither takes nor serves manifests over 4 MiB.
pub const REGISTRY_MANIFEST_LIMIT: usize = 4 << 20;

/// A small image (unique to `name`) whose manifest is padded to at least
/// `size` bytes, with its blobs pushed to `reg` as `repo`.
fn huge_manifest_image(reg: &Registry, repo: &str, name: &str, size: usize) -> Result<Blob> {
    let image = Image::new(
        Format::Oci,
        &busybox_config(),
        vec![small_layer(&format!("huge manifest {repo}:{name}"))?],
    )?;
    let client = reg.client();
    client.push_blob(repo, &image.config)?;
    client.push_blob(repo, &image.layer_blobs[0])?;
    huge_manifest(&image, size)
}

/// Pushes `repo:tag`, a valid image whose manifest is padded to at least
/// `size` bytes, which must stay under [`REGISTRY_MANIFEST_LIMIT`]. Returns
/// the manifest's digest.
pub fn push_huge_manifest(reg: &Registry, repo: &str, tag: &str, size: usize) -> Result<String> {
    let manifest = huge_manifest_image(reg, repo, tag, size)?;
    ensure!(
        manifest.data.len() < REGISTRY_MANIFEST_LIMIT,
        "a {} byte manifest is over the registry's limit: use serve_huge_manifest",
        manifest.data.len()
    );
    reg.client().put_manifest(repo, tag, &manifest)?;
    Ok(manifest.digest)
}

/// Makes `proxy` serve `repo:tag` (and the same by digest) as a valid
/// image whose manifest is padded to at least `size` bytes, any size: the
/// blobs are in the registry, the manifest comes from the proxy. Returns
/// the manifest's digest.
pub fn serve_huge_manifest(
    reg: &Registry,
    proxy: &RegistryProxy,
    repo: &str,
    tag: &str,
    size: usize,
) -> Result<String> {
    let manifest = huge_manifest_image(reg, repo, tag, size)?;
    for reference in [tag, manifest.digest.as_str()] {
        proxy.add_rule(Rule::new(
            &format!("/v2/{repo}/manifests/{reference}"),
            Fault::Respond {
                status: 200,
                headers: vec![
                    ("Content-Type".into(), manifest.media_type.clone()),
                    ("Docker-Content-Digest".into(), manifest.digest.clone()),
                ],
                body: manifest.data.to_vec(),
            },
        ));
    }
    Ok(manifest.digest)
}

/// Makes `proxy` serve `repo:tag` as a manifest with Content-Type
/// [`UNKNOWN_MEDIA_TYPE`] (the registry itself refuses such manifests).
/// The body is a valid OCI manifest of a small image whose blobs are in
/// the registry, so only the media type is wrong. Returns its digest.
pub fn serve_unknown_manifest_type(
    reg: &Registry,
    proxy: &RegistryProxy,
    repo: &str,
    tag: &str,
) -> Result<String> {
    let image = Image::new(
        Format::Oci,
        &busybox_config(),
        vec![small_layer(&format!("unknown manifest type {repo}:{tag}"))?],
    )?;
    let client = reg.client();
    client.push_blob(repo, &image.config)?;
    client.push_blob(repo, &image.layer_blobs[0])?;
    let mut m: serde_json::Value = serde_json::from_slice(&image.manifest.data)?;
    m["mediaType"] = serde_json::json!(UNKNOWN_MEDIA_TYPE);
    let body = serde_json::to_vec(&m)?;
    let digest = crate::oci::sha256_digest(&body);
    for reference in [tag, digest.as_str()] {
        proxy.add_rule(Rule::new(
            &format!("/v2/{repo}/manifests/{reference}"),
            Fault::Respond {
                status: 200,
                headers: vec![
                    ("Content-Type".into(), UNKNOWN_MEDIA_TYPE.into()),
                    ("Docker-Content-Digest".into(), digest.clone()),
                ],
                body: body.clone(),
            },
        ));
    }
    Ok(digest)
}

/// The media type the unknown-type images use.
pub const UNKNOWN_MEDIA_TYPE: &str = "application/vnd.berth.test.unknown.v1+weird";

/// An image whose second layer has a media type nobody knows (the registry
/// accepts it; a client must refuse to unpack it).
pub fn unknown_layer_type() -> Result<Image> {
    let layers = vec![
        small_layer("unknown layer type")?,
        LayerBuilder::new()
            .file("weird", "weird\n")
            .build(Compression::Gzip)?
            .with_media_type(UNKNOWN_MEDIA_TYPE),
    ];
    Image::new(Format::Oci, &busybox_config(), layers)
}

/// An index whose only entry for this platform announces an unknown
/// manifest media type.
pub fn unknown_index_entry_type() -> Result<Index> {
    let image = Image::new(
        Format::Oci,
        &busybox_config(),
        vec![small_layer("unknown index entry type")?],
    )?;
    Index::with_entries(
        Format::Oci,
        vec![IndexEntry {
            image,
            annotations: BTreeMap::new(),
            media_type: Some(UNKNOWN_MEDIA_TYPE.into()),
        }],
    )
}
