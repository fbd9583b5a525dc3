//! A tar writer for image layers and archives, SHA-256, and the busybox OCI
//! image tarball `ctr images import` reads.
//!
//! The tar writer is our own rather than the `tar` crate's because the
//! bad-input tests need archives no well-behaved writer produces (`../`
//! names, absolute paths, links out of the tree): names and link targets are
//! written exactly as given. Names or link targets too long for the ustar
//! header, large ids and extended attributes go into a PAX header.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// SHA-256 of `data`, as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The modification time entries get unless told otherwise: fixed, so the
/// same content always gives the same digests, and not 0, so an unpacker
/// that drops times is noticed.
pub const DEFAULT_MTIME: u64 = 1_600_000_000;

/// Kinds of tar entries (borrowed form, for [`TarWriter::append`]).
pub enum TarEntry<'a> {
    Dir,
    File(&'a [u8]),
    Symlink(&'a str),
    /// A hard link to an earlier entry (its name, as written in the archive).
    Hardlink(&'a str),
}

/// The kind and content of an [`Entry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Hardlink(String),
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
    Fifo,
}

/// One tar entry with all its metadata. `path` is written verbatim: it may
/// be `../x` or `/x` on purpose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    /// Extended attributes (`user.x`, `security.capability`...), as PAX
    /// `SCHILY.xattr.` records.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    fn new(path: &str, kind: Kind, mode: u32) -> Entry {
        Entry {
            path: path.to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            xattrs: Vec::new(),
        }
    }

    /// A directory, mode 0755.
    pub fn dir(path: &str) -> Entry {
        Entry::new(path, Kind::Dir, 0o755)
    }

    /// A regular file, mode 0644.
    pub fn file(path: &str, data: impl Into<Vec<u8>>) -> Entry {
        Entry::new(path, Kind::File(data.into()), 0o644)
    }

    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::new(path, Kind::Symlink(target.to_string()), 0o777)
    }

    /// A hard link to `target`, the name of an earlier entry.
    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::new(path, Kind::Hardlink(target.to_string()), 0o644)
    }

    pub fn char_dev(path: &str, major: u32, minor: u32) -> Entry {
        Entry::new(path, Kind::CharDev { major, minor }, 0o666)
    }

    pub fn block_dev(path: &str, major: u32, minor: u32) -> Entry {
        Entry::new(path, Kind::BlockDev { major, minor }, 0o660)
    }

    pub fn fifo(path: &str) -> Entry {
        Entry::new(path, Kind::Fifo, 0o644)
    }

    /// Permission bits (and setuid/setgid/sticky).
    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }

    pub fn owner(mut self, uid: u32, gid: u32) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(mut self, mtime: u64) -> Entry {
        self.mtime = mtime;
        self
    }

    pub fn xattr(mut self, name: &str, value: impl Into<Vec<u8>>) -> Entry {
        self.xattrs.push((name.to_string(), value.into()));
        self
    }
}

/// A streaming ustar/PAX writer into any `Write` (a `Vec<u8>` by default).
pub struct TarWriter<W: Write = Vec<u8>> {
    out: W,
}

impl Default for TarWriter<Vec<u8>> {
    fn default() -> Self {
        TarWriter { out: Vec::new() }
    }
}

impl TarWriter<Vec<u8>> {
    pub fn new() -> TarWriter<Vec<u8>> {
        TarWriter::default()
    }

    /// The archive with its two end-of-archive blocks.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend(std::iter::repeat_n(0u8, 1024));
        self.out
    }
}

/// The largest value an octal field of `len` bytes (with its NUL) holds.
fn octal_max(len: usize) -> u64 {
    (1u64 << (3 * (len as u32 - 1))) - 1
}

/// A PAX record: "<len> <key>=<value>\n", where len counts itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len.to_string().len() + rest > len {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Splits a name into ustar (prefix, name) fields, if it fits.
fn ustar_split(name: &str) -> Option<(&str, &str)> {
    if name.len() <= 100 {
        return Some(("", name));
    }
    // The name part must not be empty, so a directory's trailing '/' is no
    // place to cut.
    let cut = name
        .char_indices()
        .filter(|&(i, c)| c == '/' && i > 0 && i <= 155 && i + 1 < name.len())
        .map(|(i, _)| i)
        .find(|&i| name.len() - i - 1 <= 100)?;
    Some((&name[..cut], &name[cut + 1..]))
}

/// The longest prefix of `s` of at most `n` bytes that ends on a char boundary.
fn truncate(s: &str, n: usize) -> &str {
    let mut end = s.len().min(n);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl<W: Write> TarWriter<W> {
    /// A writer into `out` (e.g. a gzip encoder).
    pub fn to_writer(out: W) -> TarWriter<W> {
        TarWriter { out }
    }

    /// Writes the end-of-archive blocks and returns the inner writer.
    pub fn into_inner(mut self) -> Result<W> {
        self.out.write_all(&[0u8; 1024])?;
        Ok(self.out)
    }

    /// Appends an entry; names are relative ("bin/sh"), directories without
    /// a trailing slash. Owners are numeric, the time is [`DEFAULT_MTIME`].
    pub fn append(
        &mut self,
        name: &str,
        entry: TarEntry<'_>,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let (kind, data, link): (u8, &[u8], &str) = match entry {
            TarEntry::Dir => (b'5', &[], ""),
            TarEntry::File(d) => (b'0', d, ""),
            TarEntry::Symlink(t) => (b'2', &[], t),
            TarEntry::Hardlink(t) => (b'1', &[], t),
        };
        let name = if kind == b'5' {
            format!("{name}/")
        } else {
            name.to_string()
        };
        self.write_entry(
            &name,
            kind,
            data,
            link,
            mode,
            uid,
            gid,
            DEFAULT_MTIME,
            (0, 0),
            &[],
        )
    }

    /// Appends an entry with all its metadata.
    pub fn append_entry(&mut self, e: &Entry) -> Result<()> {
        let (kind, data, link, dev): (u8, &[u8], &str, (u32, u32)) = match &e.kind {
            Kind::Dir => (b'5', &[], "", (0, 0)),
            Kind::File(d) => (b'0', d, "", (0, 0)),
            Kind::Symlink(t) => (b'2', &[], t, (0, 0)),
            Kind::Hardlink(t) => (b'1', &[], t, (0, 0)),
            Kind::CharDev { major, minor } => (b'3', &[], "", (*major, *minor)),
            Kind::BlockDev { major, minor } => (b'4', &[], "", (*major, *minor)),
            Kind::Fifo => (b'6', &[], "", (0, 0)),
        };
        let name = if kind == b'5' && !e.path.ends_with('/') {
            format!("{}/", e.path)
        } else {
            e.path.clone()
        };
        self.write_entry(
            &name, kind, data, link, e.mode, e.uid, e.gid, e.mtime, dev, &e.xattrs,
        )
    }

    fn write_data(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(data)?;
        let pad = (512 - data.len() % 512) % 512;
        self.out.write_all(&[0u8; 512][..pad])?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn write_entry(
        &mut self,
        name: &str,
        typeflag: u8,
        data: &[u8],
        link: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: u64,
        dev: (u32, u32),
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<()> {
        let mut pax = Vec::new();
        let split = ustar_split(name);
        if split.is_none() {
            pax.extend(pax_record("path", name.as_bytes()));
        }
        if link.len() > 100 {
            pax.extend(pax_record("linkpath", link.as_bytes()));
        }
        if u64::from(uid) > octal_max(8) {
            pax.extend(pax_record("uid", uid.to_string().as_bytes()));
        }
        if u64::from(gid) > octal_max(8) {
            pax.extend(pax_record("gid", gid.to_string().as_bytes()));
        }
        if mtime > octal_max(12) {
            pax.extend(pax_record("mtime", mtime.to_string().as_bytes()));
        }
        for (k, v) in xattrs {
            pax.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
        }
        if !pax.is_empty() {
            let pax_name = format!("PaxHeaders/{}", name.rsplit('/').next().unwrap_or("x"));
            let pax_name: String = pax_name.chars().take(100).collect();
            let h = header(
                ("", &pax_name),
                b'x',
                pax.len() as u64,
                "",
                0o644,
                0,
                0,
                mtime.min(octal_max(12)),
                (0, 0),
            );
            self.out.write_all(&h)?;
            self.write_data(&pax)?;
        }
        // Without a PAX path, the ustar fields hold the whole name; with
        // one, they hold a truncated copy for readers that ignore PAX.
        let fields = split.unwrap_or(("", truncate(name, 100)));
        let link_field = truncate(link, 100);
        let h = header(
            fields,
            typeflag,
            data.len() as u64,
            link_field,
            mode,
            u32::try_from(u64::from(uid).min(octal_max(8))).unwrap_or(0),
            u32::try_from(u64::from(gid).min(octal_max(8))).unwrap_or(0),
            mtime.min(octal_max(12)),
            dev,
        );
        self.out.write_all(&h)?;
        self.write_data(data)
            .with_context(|| format!("writing tar entry {name}"))
    }

    /// Appends a directory tree from disk below `prefix` ("" for the root),
    /// in sorted order, keeping modes, owners and times (see [`read_tree`]).
    pub fn append_tree(&mut self, dir: &Path, prefix: &str) -> Result<()> {
        for e in read_tree(dir, prefix)? {
            self.append_entry(&e)?;
        }
        Ok(())
    }
}

/// The entries of a directory tree on disk, below `prefix` ("" for the
/// root), in sorted order, with modes, owners and times; files with several
/// links become hard links to the first one listed.
pub fn read_tree(dir: &Path, prefix: &str) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    read_tree_inner(dir, prefix, &mut HashMap::new(), &mut out)?;
    Ok(out)
}

fn read_tree_inner(
    dir: &Path,
    prefix: &str,
    seen: &mut HashMap<(u64, u64), String>,
    out: &mut Vec<Entry>,
) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let meta = fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        let base = |kind| Entry {
            path: name.clone(),
            kind,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: u64::try_from(meta.mtime()).unwrap_or(0),
            xattrs: Vec::new(),
        };
        let rdev = meta.rdev();
        let (major, minor) = (libc::major(rdev), libc::minor(rdev));
        if ft.is_dir() {
            out.push(base(Kind::Dir));
            read_tree_inner(&path, &format!("{name}/"), seen, out)?;
        } else if ft.is_symlink() {
            let t = fs::read_link(&path)?;
            out.push(base(Kind::Symlink(t.to_string_lossy().into_owned())));
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = seen.get(&(meta.dev(), meta.ino())) {
                    out.push(base(Kind::Hardlink(first.clone())));
                    continue;
                }
                seen.insert((meta.dev(), meta.ino()), name.clone());
            }
            let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            out.push(base(Kind::File(data)));
        } else if ft.is_char_device() {
            out.push(base(Kind::CharDev { major, minor }));
        } else if ft.is_block_device() {
            out.push(base(Kind::BlockDev { major, minor }));
        } else if ft.is_fifo() {
            out.push(base(Kind::Fifo));
        }
    }
    Ok(())
}

/// One ustar header block.
#[allow(clippy::too_many_arguments)]
fn header(
    (prefix, name): (&str, &str),
    typeflag: u8,
    size: u64,
    link: &str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    (major, minor): (u32, u32),
) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], off: usize, len: usize, s: &[u8]| {
        let n = s.len().min(len);
        h[off..off + n].copy_from_slice(&s[..n]);
    };
    let octal = |h: &mut [u8; 512], off: usize, len: usize, v: u64| {
        let s = format!("{:0width$o}\0", v.min(octal_max(len)), width = len - 1);
        h[off..off + len].copy_from_slice(s.as_bytes());
    };
    put(&mut h, 0, 100, name.as_bytes());
    octal(&mut h, 100, 8, u64::from(mode & 0o7777));
    octal(&mut h, 108, 8, u64::from(uid));
    octal(&mut h, 116, 8, u64::from(gid));
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, mtime);
    h[156] = typeflag;
    put(&mut h, 157, 100, link.as_bytes());
    put(&mut h, 257, 6, b"ustar\0");
    put(&mut h, 263, 2, b"00");
    // uname/gname stay empty: GNU tar run as root would otherwise map them
    // to local ids and ignore the numeric ones.
    octal(&mut h, 329, 8, u64::from(major));
    octal(&mut h, 337, 8, u64::from(minor));
    put(&mut h, 345, 155, prefix.as_bytes());
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// The OCI architecture name of this machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Writes an OCI image layout tar of `rootfs` (one uncompressed layer) to
/// `out`, named `name` (e.g. "docker.io/library/berth-busybox:test").
/// Returns the manifest digest.
pub fn write_oci_archive(rootfs: &Path, name: &str, out: &Path) -> Result<String> {
    use crate::oci::{Compression, Format, Image, ImageConfig, LayerBuilder};
    let layer = LayerBuilder::new()
        .tree(rootfs, "")?
        .build(Compression::None)?;
    let config = ImageConfig {
        env: vec![crate::spec::DEFAULT_PATH.to_string()],
        cmd: Some(vec!["sh".into()]),
        working_dir: Some("/".into()),
        ..ImageConfig::default()
    };
    let image = Image::new(Format::Oci, &config, vec![layer])?;
    crate::oci::write_oci_archive(out, &[(name, &image)])?;
    Ok(image.digest().to_string())
}
