//! `berth image` against a real registry (Debian's docker-registry): pulls of
//! every kind of test image, auth, mirrors, bad input, crashes, concurrent
//! pulls, air-gapped import and export, removal and pruning, and containers
//! run on the pulled images' overlay snapshots.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use berth_integration::image_store::ImageStore;
use berth_integration::images::{
    self, HARDLINK, OPAQUE_DIR, PLATFORM_FILE, RELEASE_CONTENT, RELEASE_FILE, REMOVED_FILE,
    ZSTD_CONTENT, ZSTD_FILE,
};
use berth_integration::oci::{
    self, Compression, EvilLayer, Format, Image, LayerBuilder, write_docker_archive,
    write_oci_archive,
};
use berth_integration::registry::Registry;
use berth_integration::registry_proxy::{Fault, RegistryProxy, Rule};
use berth_integration::{Bundle, Runtime, Spec, skip_unless_berth, unique_id, wait_until};

fn standard_registry() -> Result<Registry> {
    let reg = Registry::start()?;
    images::push_standard(&reg)?;
    Ok(reg)
}

fn mounted_file(root: &std::path::Path, rel: &str) -> Result<String> {
    std::fs::read_to_string(root.join(rel)).with_context(|| format!("reading {rel}"))
}

#[test]
fn pull_unpacks_every_layer_with_whiteouts_and_runs_a_container() -> Result<()> {
    if skip_unless_berth("berth image")? {
        return Ok(());
    }
    let reg = standard_registry()?;
    let store = ImageStore::new()?;
    let name = reg.reference("busybox:latest");
    store.ok(&["pull", &name])?;
    store.assert_consistent()?;

    let ls = store.ok(&["ls"])?;
    ensure!(
        ls.stdout.contains(&format!("{}/busybox", reg.addr())),
        "{ls}"
    );
    let info = store.inspect(&name)?;
    let image = &info["image"];
    ensure!(
        image["layers"].as_array().map(Vec::len) == Some(4),
        "{info}"
    );
    ensure!(
        image["repo_tags"][0] == format!("{}/busybox:latest", reg.addr()),
        "{info}"
    );
    ensure!(
        image["repo_digests"][0]
            .as_str()
            .is_some_and(|d| d.contains("@sha256:")),
        "{info}"
    );
    ensure!(
        image["id"]
            .as_str()
            .is_some_and(|i| i.starts_with("sha256:"))
    );

    let id = unique_id("snap");
    let rootfs = store.mount(&name, &id)?;
    ensure!(mounted_file(&rootfs, RELEASE_FILE)? == RELEASE_CONTENT);
    ensure!(
        !rootfs.join(REMOVED_FILE).exists(),
        "the whiteout did not hide {REMOVED_FILE}"
    );
    let opaque: Vec<String> = std::fs::read_dir(rootfs.join(OPAQUE_DIR))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()?;
    ensure!(
        opaque == vec!["c".to_string()],
        "opaque dir holds {opaque:?}"
    );
    {
        use std::os::unix::fs::MetadataExt;
        let a = std::fs::metadata(rootfs.join(HARDLINK.0))?;
        let b = std::fs::metadata(rootfs.join(HARDLINK.1))?;
        ensure!(a.ino() == b.ino(), "the hard link is a copy");
    }

    // A container on the snapshot: it writes into its upper dir only.
    let rt = Runtime::new()?;
    let cid = unique_id("onimage");
    let spec = Spec::test(
        &cid,
        &["sh", "-c", "cat /etc/berth-release && echo hi > /written"],
    )
    .readonly(false);
    let bundle = Bundle::with_rootfs(&spec, &rootfs)?;
    let out = rt.run(&cid, &bundle)?.check()?;
    ensure!(out.stdout.contains(RELEASE_CONTENT.trim()), "{out}");
    ensure!(rootfs.join("written").exists());

    // The image is in use: removing it is refused, naming the user.
    let refused = store.fails(&["rm", &name])?;
    ensure!(
        refused.stderr.contains("in use") && refused.stderr.contains(&id),
        "{refused}"
    );

    store.ok(&["unmount", &id])?;
    ensure!(!rootfs.exists(), "{} left after unmount", rootfs.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(!mounts.contains(&id), "a mount of {id} is left:\n{mounts}");

    store.ok(&["rm", &name])?;
    ensure!(store.ids()?.is_empty());
    ensure!(
        store.blobs()?.is_empty(),
        "blobs left: {:?}",
        store.blobs()?
    );
    Ok(())
}

#[test]
fn config_user_platforms_zstd_and_docker_schema2() -> Result<()> {
    if skip_unless_berth("berth image")? {
        return Ok(());
    }
    let reg = standard_registry()?;
    let store = ImageStore::new()?;

    let user = reg.reference("busybox:user");
    store.ok(&["pull", &user])?;
    let info = store.inspect(&user)?;
    ensure!(info["image"]["run"]["user"] == "1000:1000", "{info}");
    ensure!(info["config"]["config"]["User"] == "1000:1000", "{info}");

    // An index: this host's entry is chosen although a foreign one comes first.
    let multi = reg.reference("multiarch:latest");
    store.ok(&["pull", &multi])?;
    let id = unique_id("multi");
    let root = store.mount(&multi, &id)?;
    let platform = mounted_file(&root, PLATFORM_FILE)?;
    ensure!(platform.starts_with("linux/amd64"), "{platform}");
    store.ok(&["unmount", &id])?;
    // ... or the one asked for.
    let other = ImageStore::new()?;
    other.ok(&["pull", "--platform", "linux/arm64", &multi])?;
    let id = unique_id("arm");
    let root = other.mount(&multi, &id)?;
    let platform = mounted_file(&root, PLATFORM_FILE)?;
    ensure!(platform.starts_with("linux/arm64"), "{platform}");
    other.ok(&["unmount", &id])?;

    let zstd = reg.reference("zstd:latest");
    store.ok(&["pull", &zstd])?;
    let id = unique_id("zstd");
    let root = store.mount(&zstd, &id)?;
    ensure!(mounted_file(&root, ZSTD_FILE)? == ZSTD_CONTENT);
    store.ok(&["unmount", &id])?;

    let docker = reg.reference("busybox:docker");
    store.ok(&["pull", &docker])?;
    let info = store.inspect(&docker)?;
    ensure!(
        info["image"]["manifest_media_type"] == oci::DOCKER_MANIFEST,
        "{info}"
    );
    // busybox's layers are shared: each is unpacked once.
    let layers = std::fs::read_dir(store.root().join("layers"))?
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .count();
    let distinct: std::collections::HashSet<String> = store
        .ids()?
        .iter()
        .flat_map(|i| {
            store.inspect(i).map(|v| {
                v["image"]["layers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|l| l["diff_id"].as_str().map(String::from))
                    .collect::<Vec<_>>()
            })
        })
        .flatten()
        .collect();
    ensure!(
        layers == distinct.len(),
        "{layers} layer dirs for {} diff IDs",
        distinct.len()
    );
    store.assert_consistent()
}

#[test]
fn bearer_token_and_basic_credentials() -> Result<()> {
    if skip_unless_berth("berth image")? {
        return Ok(());
    }
    let reg = Registry::start_with_token_auth("puller", "s3cret")?;
    reg.push("private/busybox", "latest", images::busybox()?)?;
    let name = reg.reference("private/busybox:latest");

    let store = ImageStore::new()?;
    let anon = store.fails(&["pull", &name])?;
    ensure!(
        anon.stderr.contains("401") || anon.stderr.to_lowercase().contains("unauthorized"),
        "{anon}"
    );
    let wrong = store.fails(&["pull", "--creds", "puller:nope", &name])?;
    ensure!(
        wrong.stderr.contains("401") || wrong.stderr.contains("token"),
        "{wrong}"
    );
    store.ok(&["pull", "--creds", "puller:s3cret", &name])?;
    // One token covers the whole pull (it is cached, not fetched per blob).
    ensure!(
        reg.tokens_issued() <= 3,
        "{} tokens for one pull",
        reg.tokens_issued()
    );

    // Credentials from the runtime config.
    let configured = ImageStore::with_config(&format!(
        "[registry.hosts.\"{}\"]\nusername = \"puller\"\npassword = \"s3cret\"\n",
        reg.addr()
    ))?;
    configured.ok(&["pull", &name])?;

    let basic = Registry::start_with_basic_auth("bob", "pw")?;
    basic.push("busybox", "latest", images::busybox()?)?;
    let store = ImageStore::new()?;
    store.fails(&["pull", &basic.reference("busybox:latest")])?;
    store.ok(&[
        "pull",
        "--creds",
        "bob:pw",
        &basic.reference("busybox:latest"),
    ])?;
    Ok(())
}

#[test]
fn docker_hub_names_are_served_by_a_mirror() -> Result<()> {
    if skip_unless_berth("berth image")? {
        return Ok(());
    }
    let reg = standard_registry()?;
    let store = ImageStore::with_config(&format!(
        "[registry.mirrors.\"docker.io\"]\nendpoints = [\"http://{}\"]\n",
        reg.addr()
    ))?;
    store.ok(&["pull", "busybox"])?;
    let info = store.inspect("docker.io/library/busybox:latest")?;
    ensure!(
        info["image"]["repo_tags"][0] == "docker.io/library/busybox:latest",
        "{info}"
    );
    ensure!(store.inspect("busybox").is_ok());
    Ok(())
}

#[test]
fn a_blob_with_a_wrong_digest_or_cut_short_is_never_stored() -> Result<()> {
    if skip_unless_berth("berth image")? {
        return Ok(());
    }
    let reg = standard_registry()?;
    let store = ImageStore::new()?;
    let wrong = images::push_wrong_digest(&reg, "bad", "digest")?;
    let out = store.fails(&["pull", &reg.reference("bad:digest")])?;
    let hex = wrong.bad_digest.trim_start_matches("sha256:");
    ensure!(
        out.stderr.contains(hex),
        "the error does not name the digest: {out}"
    );
    ensure!(
        !store.blobs()?.iter().any(|b| b == hex),
        "the bad blob was stored"
    );
    store.assert_consistent()?;

    let cut = images::push_truncated_blob(&reg, "bad", "truncated")?;
    let out = store.fails(&["pull", &reg.reference("bad:truncated")])?;
    let hex = cut.bad_digest.trim_start_matches("sha256:");
    ensure!(out.stderr.contains(hex), "{out}");
    ensure!(!store.blobs()?.iter().any(|b| b == hex));
    store.assert_consistent()?;

    // The store still works.
    store.ok(&["pull", &reg.reference("busybox:latest")])?;
    store.assert_consistent()?;
    ensure!(store.ids()?.len() == 1);
    Ok(())
}

#[test]
fn oversized_manifests_and_unknown_media_types_are_refused() -> Result<()> {
    if skip_unless_berth("berth image")? {
        return Ok(());
    }
    let reg = standard_registry()?;
    let proxy = RegistryProxy::start(&reg)?;
    let store = ImageStore::new()?;

    images::serve_huge_manifest(&reg, &proxy, "huge", "latest", 6 << 20)?;
    let out = store.fails(&["pull", &proxy.reference("huge:latest")])?;
    ensure!(out.stderr.contains("manifest"), "{out}");
    ensure!(
        out.stderr.contains("4194304")
            || out.stderr.contains("4 MiB")
            || out.stderr.contains("larger"),
        "{out}"
    );

    images::serve_unknown_manifest_type(&reg, &proxy, "weird", "latest")?;
    let out = store.fails(&["pull", &proxy.reference("weird:latest")])?;
    ensure!(out.stderr.contains(images::UNKNOWN_MEDIA_TYPE), "{out}");

    reg.push("weird", "layer", &images::unknown_layer_type()?)?;
    let out = store.fails(&["pull", &reg.reference("weird:layer")])?;
    ensure!(out.stderr.contains(images::UNKNOWN_MEDIA_TYPE), "{out}");

    store.assert_consistent()?;
    ensure!(store.ids()?.is_empty());
    store.ok(&["pull", &reg.reference("busybox:latest")])?;
    Ok(())
}

#[test]
fn layers_that_reach_outside_are_refused_naming_the_entry() -> Result<()> {
    if skip_unless_berth("berth image")? {
        return Ok(());
    }
    let reg = standard_registry()?;
    let store = ImageStore::new()?;
    let passwd = std::fs::metadata("/etc/passwd")?.modified()?;
    for kind in [
        EvilLayer::ParentEscape,
        EvilLayer::AbsolutePath,
        EvilLayer::SymlinkEscape,
        EvilLayer::SymlinkParentEscape,
        EvilLayer::HardlinkEscape,
        EvilLayer::HardlinkAbsolute,
    ] {
        let tag = format!("{kind:?}").to_lowercase();
        reg.push("evil", &tag, &images::evil(kind)?)?;
        let out = store.fails(&["pull", &reg.reference(&format!("evil:{tag}"))])?;
        let offending = kind.offending_path().trim_start_matches('/');
        ensure!(
            out.stderr.contains(offending),
            "{kind:?}: the error does not name {offending}: {out}"
        );
        store.assert_consistent()?;
    }
    ensure!(std::fs::metadata("/etc/passwd")?.modified()? == passwd);
    ensure!(!std::path::Path::new("/etc/berth-evil").exists());
    // Nothing named like the targets landed anywhere in the test's directory.
    let mut stack = vec![store.scratch().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            ensure!(
                name != "passwd" && name != "berth-evil",
                "{} was written",
                e.path().display()
            );
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            }
        }
    }
    ensure!(store.ids()?.is_empty());
    store.ok(&["pull", &reg.reference("busybox:latest")])?;
    Ok(())
}

#[test]
fn kill_9_during_a_pull_leaves_the_store_consistent_and_the_next_pull_resumes() -> Result<()> {
    if skip_unless_berth("berth image")? {
        return Ok(());
    }
    let reg = Registry::start()?;
    let big = images::big()?;
    reg.push("big", "latest", big)?;
    let proxy = RegistryProxy::start(&reg)?;
    // Every blob GET is cut after 1 MiB, then stalls on retry: the pull is
    // midway when it is killed.
    proxy.add_rule(
        Rule::new("/blobs/sha256:", Fault::CutAfter(6 << 20))
            .method("GET")
            .times(20),
    );
    proxy
        .add_rule(Rule::new("/blobs/sha256:", Fault::Delay(Duration::from_secs(30))).method("GET"));
    let store = ImageStore::new()?;
    let name = proxy.reference("big:latest");
    let pull = store.spawn(&["pull", &name])?;
    // Layer blobs only: the small config is always fetched whole.
    let config_hex = big.config.digest.trim_start_matches("sha256:").to_string();
    let layer_data = |e: &std::fs::DirEntry| e.file_name().to_string_lossy() != config_hex.as_str();
    wait_until(Duration::from_secs(60), "partial downloads on disk", || {
        let ingest = store.root().join("ingest");
        let partial: u64 = std::fs::read_dir(&ingest)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(layer_data)
                    .filter_map(|e| std::fs::metadata(e.path().join("data")).ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        Ok((partial > 0).then_some(()))
    })?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pull.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    drop(pull);
    store.assert_consistent()?;
    ensure!(
        store.ids()?.is_empty(),
        "an image was recorded by a killed pull"
    );

    let partial: Vec<(String, u64)> = std::fs::read_dir(store.root().join("ingest"))?
        .filter_map(|e| e.ok())
        .filter(layer_data)
        .map(|e| {
            let len = std::fs::metadata(e.path().join("data"))
                .map(|m| m.len())
                .unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), len)
        })
        .collect();
    proxy.clear_rules();
    proxy.clear_requests();
    let second = store.ok(&["--debug", "pull", &name])?;
    store.assert_consistent()?;
    // Every blob the killed pull had begun is continued, not fetched again
    // from its first byte: with a Range request, or with none at all when
    // its bytes were all in (killed before the commit).
    let begun: Vec<&String> = partial
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(d, _)| d)
        .collect();
    ensure!(!begun.is_empty(), "the killed pull left no partial data");
    std::thread::sleep(Duration::from_millis(500)); // the proxy logs after replying
    let requests = proxy.requests();
    for hex in begun {
        let from_zero = requests
            .iter()
            .any(|r| r.method == "GET" && r.target.contains(hex.as_str()) && r.range.is_none());
        let size = big
            .layer_blobs
            .iter()
            .find(|b| b.digest.ends_with(hex.as_str()))
            .map(|b| b.size())
            .unwrap_or(0);
        let have = partial
            .iter()
            .find(|(d, _)| d == hex)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        let ranged = requests
            .iter()
            .any(|r| r.method == "GET" && r.target.contains(hex.as_str()) && r.range.is_some());
        ensure!(
            have >= size || ranged,
            "blob {hex} ({have} of {size} bytes) was not resumed with a Range request: {requests:?}"
        );
        ensure!(
            !from_zero,
            "blob {hex} was downloaded again from the start; partial data: {partial:?}; requests: {requests:?}\n{second}"
        );
    }
    ensure!(store.ids()?.len() == 1);
    Ok(())
}

#[test]
fn concurrent_pulls_of_one_image_download_each_blob_once() -> Result<()> {
    if skip_unless_berth("berth image")? {
        return Ok(());
    }
    let reg = standard_registry()?;
    let proxy = RegistryProxy::start(&reg)?;
    proxy.add_rule(
        Rule::new("/blobs/sha256:", Fault::Delay(Duration::from_millis(200))).method("GET"),
    );
    let store = ImageStore::new()?;
    let name = proxy.reference("busybox:latest");
    let a = store.spawn(&["pull", &name])?;
    let b = store.spawn(&["pull", &name])?;
    a.wait(Duration::from_secs(120))?.check()?;
    b.wait(Duration::from_secs(120))?.check()?;
    let mut gets: HashMap<String, usize> = HashMap::new();
    for r in proxy.requests() {
        if r.method == "GET" && r.target.contains("/blobs/sha256:") && r.status < 300 {
            *gets.entry(r.target.clone()).or_default() += 1;
        }
    }
    ensure!(!gets.is_empty());
    for (blob, n) in &gets {
        ensure!(*n == 1, "{blob} downloaded {n} times");
    }
    store.assert_consistent()?;
    ensure!(store.ids()?.len() == 1);
    Ok(())
}

#[test]
fn import_export_and_preload_for_air_gapped_nodes() -> Result<()> {
    if skip_unless_berth("berth image")? {
        return Ok(());
    }
    let store = ImageStore::new()?;
    let dir = store.scratch().join("airgap");
    std::fs::create_dir_all(&dir)?;
    let docker = dir.join("busybox-docker.tar");
    write_docker_archive(
        &docker,
        &[("example.com/tools/busybox:1.0", images::busybox_docker()?)],
    )?;
    let oci = dir.join("testapp-oci.tar");
    write_oci_archive(&oci, &[("example.com/apps/testapp:2", images::testapp()?)])?;

    let out = store.ok(&["import", docker.to_str().context("path")?])?;
    ensure!(
        out.stdout.contains("example.com/tools/busybox:1.0"),
        "{out}"
    );
    store.ok(&["import", oci.to_str().context("path")?])?;
    store.inspect("example.com/tools/busybox:1.0")?;
    let testapp = store.inspect("example.com/apps/testapp:2")?;
    ensure!(
        testapp["image"]["run"]["entrypoint"][0] == "/testapp",
        "{testapp}"
    );

    // Run the imported busybox.
    let id = unique_id("imported");
    let rootfs = store.mount("example.com/tools/busybox:1.0", &id)?;
    let rt = Runtime::new()?;
    let cid = unique_id("imp");
    let bundle = Bundle::with_rootfs(&Spec::test(&cid, &["cat", "/etc/berth-release"]), &rootfs)?;
    let out = rt.run(&cid, &bundle)?.check()?;
    ensure!(out.stdout.contains(RELEASE_CONTENT.trim()), "{out}");
    store.ok(&["unmount", &id])?;

    // Export both, import into an empty store: the same images.
    let exported = store.scratch().join("export.tar");
    store.ok(&[
        "export",
        "-o",
        exported.to_str().context("path")?,
        "example.com/tools/busybox:1.0",
        "example.com/apps/testapp:2",
    ])?;
    let other = ImageStore::new()?;
    other.ok(&["import", exported.to_str().context("path")?])?;
    let mut a = store.ids()?;
    let mut b = other.ids()?;
    a.sort();
    b.sort();
    ensure!(a == b, "{a:?} != {b:?}");
    other.inspect("example.com/tools/busybox:1.0")?;
    other.assert_consistent()?;

    // A preload dir is imported once.
    let fresh = ImageStore::new()?;
    let first = fresh.ok(&["import", "--dir", dir.to_str().context("path")?])?;
    ensure!(first.stdout.lines().count() == 2, "{first}");
    let second = fresh.ok(&["import", "--dir", dir.to_str().context("path")?])?;
    ensure!(second.stdout.trim().is_empty(), "imported again: {second}");
    Ok(())
}

#[test]
fn remove_drops_every_tag_and_prune_collects_unused_blobs() -> Result<()> {
    if skip_unless_berth("berth image")? {
        return Ok(());
    }
    let reg = standard_registry()?;
    // Two names for one image.
    reg.push("again", "v1", images::busybox()?)?;
    let store = ImageStore::new()?;
    store.ok(&["pull", &reg.reference("busybox:latest")])?;
    store.ok(&["pull", &reg.reference("again:v1")])?;
    ensure!(store.ids()?.len() == 1);
    store.ok(&["pull", &reg.reference("zstd:latest")])?;
    let before = store.blobs()?.len();
    let df = |s: &ImageStore| -> Result<u64> {
        let out = s.ok(&["df"])?;
        out.stdout
            .split(" in ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no inode count in {out}"))
    };
    let inodes_before = df(&store)?;
    ensure!(inodes_before > 0);

    store.ok(&["rm", &reg.reference("again:v1")])?;
    let info = store.cmd(&["inspect", &reg.reference("busybox:latest")])?;
    ensure!(
        !info.success(),
        "a tag of the removed image survived: {info}"
    );
    // zstd shares busybox's layers: those blobs stay.
    let after = store.blobs()?.len();
    ensure!(after < before && after > 0, "{before} -> {after}");
    store.ok(&["rm", &reg.reference("zstd:latest")])?;
    ensure!(store.blobs()?.is_empty());
    ensure!(df(&store)? < inodes_before);
    let pruned = store.ok(&["prune"])?;
    ensure!(pruned.stdout.contains("deleted 0 blob"), "{pruned}");
    let missing = store.fails(&["rm", "nothing:here"])?;
    ensure!(missing.stderr.contains("nothing:here"), "{missing}");
    Ok(())
}

#[test]
fn an_image_of_120_layers_mounts() -> Result<()> {
    if skip_unless_berth("berth image")? {
        return Ok(());
    }
    let reg = Registry::start()?;
    let mut layers = Vec::new();
    for i in 0..120 {
        layers.push(
            LayerBuilder::new()
                .dir("layers")
                .file(&format!("layers/{i:03}"), format!("{i}\n"))
                .file("layers/top", format!("{i}\n"))
                .build(Compression::Gzip)?,
        );
    }
    let image = Image::new(Format::Oci, &images::busybox_config(), layers)?;
    reg.push("many", "latest", &image)?;
    let store = ImageStore::new()?;
    let name = reg.reference("many:latest");
    store.ok(&["pull", &name])?;
    let id = unique_id("many");
    let root = store.mount(&name, &id)?;
    ensure!(mounted_file(&root, "layers/000")? == "0\n");
    ensure!(mounted_file(&root, "layers/119")? == "119\n");
    ensure!(
        mounted_file(&root, "layers/top")? == "119\n",
        "the top layer does not win"
    );
    store.ok(&["unmount", &id])?;
    Ok(())
}
