//! An OCI image layout tarball of a rootfs (uncompressed layer), for
//! `ctr images import`; with the tar writer and SHA-256 it needs.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde_json::json;

/// SHA-256 of `data`, as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for chunk in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in chunk.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

/// A minimal ustar writer (regular files, directories, symlinks).
#[derive(Default)]
pub struct TarWriter {
    buf: Vec<u8>,
}

/// Kinds of tar entries.
pub enum TarEntry<'a> {
    Dir,
    File(&'a [u8]),
    Symlink(&'a str),
}

impl TarWriter {
    pub fn new() -> TarWriter {
        TarWriter::default()
    }

    /// Appends an entry; names are relative ("bin/sh"), directories without
    /// a trailing slash.
    pub fn append(
        &mut self,
        name: &str,
        entry: TarEntry<'_>,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let mut name = name.to_string();
        if matches!(entry, TarEntry::Dir) {
            name.push('/');
        }
        let (prefix, base) = if name.len() <= 100 {
            ("", name.as_str())
        } else {
            let cut = name[..name.len().min(155)]
                .rfind('/')
                .filter(|&i| name.len() - i - 1 <= 100)
                .with_context(|| format!("tar path too long: {name}"))?;
            (&name[..cut], &name[cut + 1..])
        };
        let mut h = [0u8; 512];
        let put = |h: &mut [u8; 512], off: usize, len: usize, s: &[u8]| {
            h[off..off + s.len().min(len)].copy_from_slice(&s[..s.len().min(len)]);
        };
        let octal = |h: &mut [u8; 512], off: usize, len: usize, v: u64| {
            let s = format!("{:0width$o}\0", v, width = len - 1);
            h[off..off + len].copy_from_slice(s.as_bytes());
        };
        put(&mut h, 0, 100, base.as_bytes());
        octal(&mut h, 100, 8, u64::from(mode & 0o7777));
        octal(&mut h, 108, 8, u64::from(uid));
        octal(&mut h, 116, 8, u64::from(gid));
        let (size, typeflag, link, data): (u64, u8, &str, &[u8]) = match entry {
            TarEntry::Dir => (0, b'5', "", &[]),
            TarEntry::File(d) => (d.len() as u64, b'0', "", d),
            TarEntry::Symlink(t) => (0, b'2', t, &[]),
        };
        ensure!(link.len() <= 100, "symlink target too long: {link}");
        octal(&mut h, 124, 12, size);
        octal(&mut h, 136, 12, 0);
        h[156] = typeflag;
        put(&mut h, 157, 100, link.as_bytes());
        put(&mut h, 257, 6, b"ustar\0");
        put(&mut h, 263, 2, b"00");
        put(&mut h, 265, 32, b"root");
        put(&mut h, 297, 32, b"root");
        put(&mut h, 345, 155, prefix.as_bytes());
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.buf.extend_from_slice(&h);
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        Ok(())
    }

    /// Appends a directory tree from disk below `prefix` ("" for the root),
    /// in sorted order, keeping modes and owners.
    pub fn append_tree(&mut self, dir: &Path, prefix: &str) -> Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            let meta = fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            if ft.is_dir() {
                self.append(&name, TarEntry::Dir, meta.mode(), meta.uid(), meta.gid())?;
                self.append_tree(&path, &format!("{name}/"))?;
            } else if ft.is_symlink() {
                let t = fs::read_link(&path)?;
                self.append(
                    &name,
                    TarEntry::Symlink(&t.to_string_lossy()),
                    0o777,
                    meta.uid(),
                    meta.gid(),
                )?;
            } else if ft.is_file() {
                let data = fs::read(&path)?;
                self.append(
                    &name,
                    TarEntry::File(&data),
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                )?;
            }
        }
        Ok(())
    }

    /// The archive with its two end-of-archive blocks.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }
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
    let mut layer = TarWriter::new();
    layer.append_tree(rootfs, "")?;
    let layer = layer.finish();
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let config = serde_json::to_vec(&json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": [crate::spec::DEFAULT_PATH],
            "Cmd": ["sh"],
            "WorkingDir": "/"
        },
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [ { "created_by": "berth-integration busybox fixture" } ]
    }))?;
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len()
        },
        "layers": [ {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len()
        } ]
    }))?;
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let tag = name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [ {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": oci_arch(), "os": "linux" },
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag
            }
        } ]
    }))?;

    let mut tar = TarWriter::new();
    tar.append(
        "oci-layout",
        TarEntry::File(br#"{"imageLayoutVersion":"1.0.0"}"#),
        0o644,
        0,
        0,
    )?;
    tar.append("index.json", TarEntry::File(&index), 0o644, 0, 0)?;
    tar.append("blobs", TarEntry::Dir, 0o755, 0, 0)?;
    tar.append("blobs/sha256", TarEntry::Dir, 0o755, 0, 0)?;
    for blob in [&layer, &config, &manifest] {
        let name = format!("blobs/sha256/{}", sha256_hex(blob));
        tar.append(&name, TarEntry::File(blob), 0o644, 0, 0)?;
    }
    fs::write(out, tar.finish()).with_context(|| format!("writing {}", out.display()))?;
    Ok(manifest_digest)
}
