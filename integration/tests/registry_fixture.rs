//! Self-tests of the registry fixtures: the registry starts and stops
//! cleanly, what we push reads back (with our client, skopeo and
//! containerd), token auth works as real clients expect, the OCI layout and
//! `docker save` writers produce what skopeo reads, the bad images are bad
//! in the intended way, and the fault-injecting proxy injects its faults.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use berth_integration::containerd::Containerd;
use berth_integration::exec::wait_until;
use berth_integration::http::raw_request;
use berth_integration::image::{Entry, oci_arch};
use berth_integration::images::{self, STANDARD_NAMES};
use berth_integration::oci::{
    self, Artifact, Compression, EvilLayer, Format, Image, ImageConfig, LayerBuilder,
    OCI_LAYER_ZSTD, sha256_digest,
};
use berth_integration::proc;
use berth_integration::registry::{
    BASIC_REALM, Client, Registry, TOKEN_SERVICE, parse_bearer_challenge,
};
use berth_integration::registry_proxy::{Fault, RegistryProxy, Rule};
use berth_integration::runtime::which;
use berth_integration::workdir::tempdir;
use serde_json::Value;

const USER: &str = "berth";
const PASSWORD: &str = "s3cret-pass";

fn skopeo(args: &[&str]) -> Result<String> {
    let bin =
        which("skopeo").ok_or_else(|| anyhow!("skopeo not installed (apt-get install skopeo)"))?;
    let out = Command::new(bin).args(args).output()?;
    ensure!(
        out.status.success(),
        "skopeo {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn skopeo_json(args: &[&str]) -> Result<Value> {
    let out = skopeo(args)?;
    serde_json::from_str(&out).with_context(|| format!("skopeo output: {out}"))
}

/// A signature policy that accepts anything (skopeo copy needs one).
fn policy(dir: &Path) -> Result<String> {
    let p = dir.join("policy.json");
    std::fs::write(&p, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)?;
    Ok(p.to_string_lossy().into_owned())
}

fn tar_listing(tar: &[u8]) -> Result<String> {
    let dir = tempdir("tar-list-")?;
    let f = dir.path().join("layer.tar");
    std::fs::write(&f, tar)?;
    let out = Command::new("tar").arg("-tvf").arg(&f).output()?;
    ensure!(out.status.success(), "tar -tvf: {out:?}");
    Ok(String::from_utf8(out.stdout)?)
}

#[test]
fn registry_starts_fast_and_leaves_nothing() -> Result<()> {
    let t = Instant::now();
    let reg = Registry::start()?;
    let took = t.elapsed();
    eprintln!("docker-registry ready in {took:?}");
    ensure!(
        took < Duration::from_secs(3),
        "registry start took {took:?}"
    );
    let pid = reg.pid().context("no pid")?;
    let dir = reg.dir().to_path_buf();
    let addr = reg.addr();
    ensure!(proc::alive(pid));
    let (head, body) = raw_request(&addr, "GET", "/v2/", &[], &[])?;
    ensure!(head.start[1] == "200", "GET /v2/: {head:?}");
    ensure!(
        body.starts_with(b"{}"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    ensure!(
        head.header("docker-distribution-api-version") == Some("registry/2.0"),
        "{head:?}"
    );
    drop(reg);
    ensure!(!proc::alive(pid), "registry {pid} still running after drop");
    ensure!(!dir.exists(), "{} left behind", dir.display());
    ensure!(
        std::net::TcpStream::connect(&addr).is_err(),
        "something still listens on {addr}"
    );
    Ok(())
}

#[test]
fn registry_dies_with_a_killed_test_process() -> Result<()> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_test_registry"))
        .arg("--empty")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut pid = None;
    let mut dir = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("registry ") {
            let f: Vec<&str> = rest.split(' ').collect();
            pid = f.get(2).and_then(|p| p.parse::<i32>().ok());
            dir = f.get(4).map(PathBuf::from);
        }
        if line == "ready" {
            break;
        }
    }
    let pid = pid.context("no registry pid printed")?;
    let dir = dir.context("no registry dir printed")?;
    ensure!(proc::alive(pid));
    child.kill()?;
    child.wait()?;
    let gone = wait_until(Duration::from_secs(5), "the registry to die", || {
        Ok((!proc::alive(pid)).then_some(()))
    });
    // The killed process could not clean up: its scratch dir goes here.
    if let Some(base) = dir.parent()
        && base.file_name().is_some_and(|n| {
            n.to_string_lossy()
                .starts_with(&format!("berth-it-{}-", child.id()))
        })
    {
        std::fs::remove_dir_all(base)?;
    }
    gone
}

#[test]
fn push_and_read_back_over_plain_http() -> Result<()> {
    let reg = Registry::start()?;
    images::push_standard(&reg)?;
    let c = reg.client();
    for name in STANDARD_NAMES {
        let (repo, tag) = name.split_once(':').context("name")?;
        c.get_manifest(repo, tag)
            .with_context(|| format!("{name} missing"))?;
    }
    let bb = images::busybox()?;
    let (ct, bytes) = c.get_manifest("busybox", "latest")?;
    assert_eq!(ct, oci::OCI_MANIFEST);
    assert_eq!(bytes, *bb.manifest.data);
    assert_eq!(sha256_digest(&bytes), bb.digest());
    let (_, by_digest) = c.get_manifest("busybox", bb.digest())?;
    assert_eq!(by_digest, bytes);
    for b in bb.blobs() {
        assert_eq!(c.get_blob("busybox", &b.digest)?, *b.data);
    }
    let tags: BTreeSet<String> = c.tags("busybox")?.into_iter().collect();
    assert_eq!(tags, ["docker", "latest", "user"].map(String::from).into());
    let (ct, _) = c.get_manifest("busybox", "docker")?;
    assert_eq!(ct, oci::DOCKER_MANIFEST);

    let idx = images::multiarch()?;
    let (ct, bytes) = c.get_manifest("multiarch", "latest")?;
    assert_eq!(ct, oci::OCI_INDEX);
    assert_eq!(bytes, *idx.manifest.data);
    for e in &idx.entries {
        let (_, m) = c.get_manifest("multiarch", e.image.digest())?;
        assert_eq!(m, *e.image.manifest.data);
    }
    let (ct, _) = c.get_manifest("multiarch", "docker")?;
    assert_eq!(ct, oci::DOCKER_LIST);

    // Pushing again uploads nothing new and changes nothing.
    c.push("busybox", "latest", bb)?;
    assert_eq!(c.get_manifest("busybox", "latest")?.1, *bb.manifest.data);

    // A blob whose bytes do not match the digest it is uploaded under is
    // refused by the registry itself.
    let wrong = c.upload_blob("busybox", &sha256_digest(b"other"), b"these bytes")?;
    ensure!(wrong.status == 400, "{wrong:?}");
    ensure!(wrong.text().contains("DIGEST_INVALID"), "{}", wrong.text());

    c.delete_manifest("busybox", images::busybox_user()?.digest())?;
    ensure!(c.get_manifest("busybox", "user").is_err());
    Ok(())
}

#[test]
fn standard_images_have_the_promised_content() -> Result<()> {
    let bb = images::busybox()?;
    assert_eq!(bb.layers.len(), 4);
    let kinds: Vec<Compression> = bb.layers.iter().map(|l| l.compression).collect();
    assert_eq!(
        kinds,
        [
            Compression::Gzip,
            Compression::Gzip,
            Compression::None,
            Compression::Gzip
        ]
    );
    let config: Value = serde_json::from_slice(&bb.config.data)?;
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], oci_arch());
    assert_eq!(config["config"]["Cmd"][0], "sh");
    let diff_ids: Vec<String> = bb.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    for l in &bb.layers {
        assert_eq!(sha256_digest(&l.tar()?), l.diff_id);
        assert_eq!(sha256_digest(&l.data), l.digest);
    }
    let base = tar_listing(&bb.layers[0].tar()?)?;
    ensure!(base.contains("bin/busybox"), "{base}");
    ensure!(
        base.contains("drwxrwxrwt") && base.contains(" tmp/"),
        "{base}"
    );
    let applets = tar_listing(&bb.layers[1].tar()?)?;
    ensure!(applets.contains("bin/sh -> busybox"), "{applets}");
    let etc = tar_listing(&bb.layers[2].tar()?)?;
    ensure!(etc.contains("etc/motd-link link to etc/motd"), "{etc}");
    ensure!(
        etc.contains("1000/1000") && etc.contains("home/user/.profile"),
        "{etc}"
    );
    let changes = tar_listing(&bb.layers[3].tar()?)?;
    ensure!(changes.contains("etc/.wh.berth-remove-me"), "{changes}");
    ensure!(changes.contains("opt/stale/.wh..wh..opq"), "{changes}");

    let user: Value = serde_json::from_slice(&images::busybox_user()?.config.data)?;
    assert_eq!(user["config"]["User"], "1000:1000");
    assert_eq!(user["config"]["WorkingDir"], "/home/user");
    assert_eq!(
        images::busybox_user()?.layers[0].digest,
        bb.layers[0].digest
    );

    let docker = images::busybox_docker()?;
    let m: Value = serde_json::from_slice(&docker.manifest.data)?;
    assert_eq!(m["mediaType"], oci::DOCKER_MANIFEST);
    assert_eq!(m["config"]["mediaType"], oci::DOCKER_CONFIG);
    for l in m["layers"].as_array().context("layers")? {
        assert_eq!(l["mediaType"], oci::DOCKER_LAYER_GZIP);
    }

    let app = images::testapp()?;
    let cfg: Value = serde_json::from_slice(&app.config.data)?;
    assert_eq!(cfg["config"]["Entrypoint"], serde_json::json!(["/testapp"]));
    assert_eq!(cfg["config"]["StopSignal"], "SIGTERM");
    ensure!(
        cfg["config"]["ExposedPorts"]["8080/tcp"].is_object(),
        "{cfg}"
    );
    ensure!(cfg["config"]["Volumes"]["/data"].is_object(), "{cfg}");
    let listing = tar_listing(&app.layers[0].tar()?)?;
    ensure!(
        listing.contains(" testapp\n") && !listing.contains("busybox"),
        "{listing}"
    );

    let z = images::zstd()?;
    let last = z.layers.last().context("no layers")?;
    assert_eq!(last.compression, Compression::Zstd);
    assert_eq!(last.media_type(Format::Oci)?, OCI_LAYER_ZSTD);
    ensure!(
        tar_listing(&last.tar()?)?.contains(images::ZSTD_FILE),
        "zstd layer content"
    );

    let idx = images::multiarch()?;
    let native = format!("linux/{}", oci_arch());
    let platforms: Vec<String> = idx
        .entries
        .iter()
        .map(|e| e.image.image_config.platform().to_string())
        .collect();
    ensure!(
        platforms[0] != native,
        "the foreign platform must come first: {platforms:?}"
    );
    ensure!(platforms.contains(&native), "{platforms:?}");
    ensure!(
        platforms.contains(&"unknown/unknown".to_string()),
        "{platforms:?}"
    );
    let native_img = idx.image_for(&native).context("native image")?;
    let marker = native_img.layers.last().context("no layers")?.tar()?;
    ensure!(
        String::from_utf8_lossy(&marker).contains(&format!("{native}\n")),
        "platform marker"
    );
    let list = images::multiarch_docker()?;
    let v: Value = serde_json::from_slice(&list.manifest.data)?;
    assert_eq!(v["mediaType"], oci::DOCKER_LIST);
    for m in v["manifests"].as_array().context("manifests")? {
        assert_eq!(m["mediaType"], oci::DOCKER_MANIFEST);
    }
    Ok(())
}

#[test]
fn token_auth_challenges_and_issues_tokens() -> Result<()> {
    let reg = Registry::start_with_token_auth(USER, PASSWORD)?;
    assert_eq!(reg.credentials(), Some((USER, PASSWORD)));
    let cfg: Value = serde_json::from_str(&reg.docker_config_json().context("config")?)?;
    assert_eq!(
        cfg["auths"][reg.addr()]["auth"],
        base64_encode(format!("{USER}:{PASSWORD}").as_bytes())
    );
    let realm = reg.token_realm().context("no realm")?;

    // Anonymous: 401 with a Bearer challenge naming our realm and service.
    let (head, _) = raw_request(&reg.addr(), "GET", "/v2/busybox/manifests/latest", &[], &[])?;
    ensure!(head.start[1] == "401", "{head:?}");
    let challenge = head.header("www-authenticate").context("no challenge")?;
    let params = parse_bearer_challenge(challenge).context("not a Bearer challenge")?;
    assert_eq!(params["realm"], realm);
    assert_eq!(params["service"], TOKEN_SERVICE);
    assert_eq!(params["scope"], "repository:busybox:pull");

    // With the credentials, a token works for push and pull.
    let before = reg.token_requests();
    let c = reg.client();
    c.push("busybox", "latest", images::busybox()?)?;
    let (_, m) = c.get_manifest("busybox", "latest")?;
    assert_eq!(m, *images::busybox()?.manifest.data);
    ensure!(reg.token_requests() > before, "no token was requested");
    ensure!(reg.tokens_issued() >= 1);
    // Cached: the token for a scope is asked for once.
    let n = reg.token_requests();
    c.get_manifest("busybox", "latest")?;
    c.get_blob("busybox", &images::busybox()?.config.digest)?;
    assert_eq!(reg.token_requests(), n);

    // A token by hand: GET with Basic credentials, used as a Bearer.
    let basic = format!(
        "Basic {}",
        base64_encode(format!("{USER}:{PASSWORD}").as_bytes())
    );
    let token_addr = realm
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .context("realm")?;
    let (th, tb) = raw_request(
        token_addr,
        "GET",
        &format!("/token?service={TOKEN_SERVICE}&scope=repository%3Abusybox%3Apull"),
        &[("Authorization", &basic)],
        &[],
    )?;
    ensure!(
        th.start[1] == "200",
        "{th:?} {}",
        String::from_utf8_lossy(&tb)
    );
    let token: Value = serde_json::from_slice(&tb)?;
    let token = token["token"].as_str().context("no token")?;
    let claims = decode_claims(token)?;
    assert_eq!(claims["aud"], TOKEN_SERVICE);
    assert_eq!(claims["access"][0]["name"], "busybox");
    let bearer = format!("Bearer {token}");
    let accept = oci::OCI_MANIFEST;
    let (h, _) = raw_request(
        &reg.addr(),
        "GET",
        "/v2/busybox/manifests/latest",
        &[("Authorization", &bearer), ("Accept", accept)],
        &[],
    )?;
    ensure!(h.start[1] == "200", "{h:?}");
    // That token grants pull on busybox only.
    let (h, _) = raw_request(
        &reg.addr(),
        "GET",
        "/v2/other/manifests/latest",
        &[("Authorization", &bearer)],
        &[],
    )?;
    ensure!(h.start[1] == "401", "{h:?}");
    ensure!(
        h.header("www-authenticate")
            .is_some_and(|c| c.contains("insufficient_scope")),
        "{h:?}"
    );

    // The OAuth2 password grant (what containerd POSTs) works too.
    let form = format!(
        "grant_type=password&username={USER}&password={PASSWORD}&service={TOKEN_SERVICE}&scope=repository%3Abusybox%3Apull&client_id=test"
    );
    let (ph, pb) = raw_request(
        token_addr,
        "POST",
        "/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )?;
    ensure!(ph.start[1] == "200", "{ph:?}");
    let v: Value = serde_json::from_slice(&pb)?;
    ensure!(v["access_token"].is_string(), "{v}");

    // Wrong password: the token server refuses, so does the registry.
    let wrong = Client::new(&reg.url(), Some((USER, "wrong")));
    let err = wrong
        .get_manifest("busybox", "latest")
        .expect_err("a wrong password must not get in");
    ensure!(format!("{err:#}").contains("401"), "{err:#}");
    // No credentials: an empty token, which the registry refuses.
    let anon = reg.anonymous_client();
    let err = anon
        .get_manifest("busybox", "latest")
        .expect_err("anonymous must not get in");
    ensure!(format!("{err:#}").contains("401"), "{err:#}");
    ensure!(anon.push("x", "latest", images::busybox()?).is_err());
    Ok(())
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn decode_claims(token: &str) -> Result<Value> {
    use base64::Engine;
    let part = token.split('.').nth(1).context("not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part)?;
    Ok(serde_json::from_slice(&bytes)?)
}

#[test]
fn skopeo_reads_what_we_pushed() -> Result<()> {
    let reg = Registry::start()?;
    images::push_standard(&reg)?;
    let bb = images::busybox()?;
    let r = reg.reference("busybox:latest");
    let v = skopeo_json(&["inspect", "--tls-verify=false", &format!("docker://{r}")])?;
    assert_eq!(v["Digest"], bb.digest());
    let layers: Vec<&str> = bb.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(v["Layers"], serde_json::json!(layers));
    assert_eq!(v["Architecture"], oci_arch());
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{r}"),
    ])?;
    assert_eq!(raw.as_bytes(), &bb.manifest.data[..]);

    let user = skopeo_json(&[
        "inspect",
        "--config",
        "--tls-verify=false",
        &format!("docker://{}", reg.reference("busybox:user")),
    ])?;
    assert_eq!(user["config"]["User"], "1000:1000");

    // skopeo picks the arm64 image of the index when asked to.
    let idx = images::multiarch()?;
    let arm = idx
        .image_for("linux/arm64/v8")
        .or_else(|| idx.image_for("linux/amd64"));
    let arm = arm.context("foreign image")?;
    let p = arm.image_config.platform();
    let mut args = vec![
        "--override-arch".to_string(),
        p.architecture.clone(),
        "--override-os".to_string(),
        p.os.clone(),
    ];
    if let Some(var) = &p.variant {
        args.extend(["--override-variant".to_string(), var.clone()]);
    }
    args.extend(
        [
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}", reg.reference("multiarch:latest")),
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let v = skopeo_json(&args)?;
    assert_eq!(v["Digest"], idx.digest());
    let want: Vec<&str> = arm.layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(v["Layers"], serde_json::json!(want));

    // A full copy verifies every blob's digest.
    let dir = tempdir("skopeo-")?;
    let pol = policy(dir.path())?;
    let dest = dir.path().join("copy");
    skopeo(&[
        "--policy",
        &pol,
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}", reg.reference("zstd:latest")),
        &format!("oci:{}:zstd", dest.display()),
    ])?;
    ensure!(
        dest.join("blobs/sha256")
            .join(
                images::zstd()?
                    .layers
                    .last()
                    .context("layers")?
                    .digest
                    .trim_start_matches("sha256:")
            )
            .is_file(),
        "the zstd layer was not copied"
    );
    Ok(())
}

#[test]
fn basic_auth_mode_wants_credentials() -> Result<()> {
    let reg = Registry::start_with_basic_auth(USER, PASSWORD)?;
    let (head, _) = raw_request(&reg.addr(), "GET", "/v2/", &[], &[])?;
    ensure!(head.start[1] == "401", "{head:?}");
    let challenge = head.header("www-authenticate").context("no challenge")?;
    assert_eq!(challenge, format!("Basic realm=\"{BASIC_REALM}\""));
    let c = reg.client();
    c.push("busybox", "latest", images::busybox()?)?;
    assert_eq!(
        c.get_manifest("busybox", "latest")?.1,
        *images::busybox()?.manifest.data
    );
    let wrong = Client::new(&reg.url(), Some((USER, "wrong")));
    let err = wrong
        .get_manifest("busybox", "latest")
        .expect_err("wrong password");
    ensure!(format!("{err:#}").contains("401"), "{err:#}");
    ensure!(
        reg.anonymous_client()
            .get_manifest("busybox", "latest")
            .is_err()
    );
    let r = format!("docker://{}", reg.reference("busybox:latest"));
    let creds = format!("{USER}:{PASSWORD}");
    let v = skopeo_json(&["inspect", "--tls-verify=false", "--creds", &creds, &r])?;
    assert_eq!(v["Digest"], images::busybox()?.digest());
    ensure!(skopeo(&["inspect", "--tls-verify=false", "--creds", "berth:nope", &r]).is_err());
    Ok(())
}

#[test]
fn skopeo_reads_token_protected_registry() -> Result<()> {
    let reg = Registry::start_with_token_auth(USER, PASSWORD)?;
    reg.push("busybox", "latest", images::busybox()?)?;
    let r = format!("docker://{}", reg.reference("busybox:latest"));
    let creds = format!("{USER}:{PASSWORD}");
    let v = skopeo_json(&["inspect", "--tls-verify=false", "--creds", &creds, &r])?;
    assert_eq!(v["Digest"], images::busybox()?.digest());
    ensure!(skopeo(&["inspect", "--tls-verify=false", "--creds", "berth:nope", &r]).is_err());
    ensure!(skopeo(&["inspect", "--tls-verify=false", "--no-creds", &r]).is_err());
    Ok(())
}

#[test]
fn layouts_and_archives_are_read_by_skopeo() -> Result<()> {
    let dir = tempdir("layouts-")?;
    let pol = policy(dir.path())?;
    let bb = images::busybox()?;
    let user = images::busybox_user()?;
    let idx = images::multiarch()?;

    let layout = dir.path().join("layout");
    oci::write_oci_layout(
        &layout,
        &[
            ("docker.io/library/busybox:latest", bb as &dyn Artifact),
            ("docker.io/library/multiarch:latest", idx),
        ],
    )?;
    let index: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    assert_eq!(index["manifests"][0]["digest"], bb.digest());
    assert_eq!(
        index["manifests"][0]["annotations"][oci::ANNOTATION_CONTAINERD_NAME],
        "docker.io/library/busybox:latest"
    );
    let v = skopeo_json(&["inspect", &format!("oci:{}:latest", layout.display())])?;
    assert_eq!(v["Digest"], bb.digest());

    let archive = dir.path().join("oci.tar");
    oci::write_oci_archive(
        &archive,
        &[("docker.io/library/busybox:user", user as &dyn Artifact)],
    )?;
    let v = skopeo_json(&[
        "inspect",
        "--config",
        &format!("oci-archive:{}", archive.display()),
    ])?;
    assert_eq!(v["config"]["User"], "1000:1000");

    let save = dir.path().join("save.tar");
    oci::write_docker_archive(
        &save,
        &[
            ("busybox:latest", bb),
            ("busybox:again", bb),
            ("busybox:user", user),
        ],
    )?;
    let list = Command::new("tar").arg("-tf").arg(&save).output()?;
    let list = String::from_utf8(list.stdout)?;
    ensure!(
        list.contains("manifest.json") && list.contains("/layer.tar"),
        "{list}"
    );
    let mut manifest = String::new();
    tar_member(&save, "manifest.json")?.read_to_string(&mut manifest)?;
    let m: Value = serde_json::from_str(&manifest)?;
    assert_eq!(m.as_array().map(Vec::len), Some(2));
    assert_eq!(
        m[0]["RepoTags"],
        serde_json::json!(["busybox:latest", "busybox:again"])
    );
    let v = skopeo_json(&[
        "inspect",
        "--config",
        &format!("docker-archive:{}:busybox:user", save.display()),
    ])?;
    assert_eq!(v["config"]["User"], "1000:1000");
    // Copying out of the archive checks the uncompressed layers against
    // the config's diff IDs.
    let out = dir.path().join("from-save");
    skopeo(&[
        "--policy",
        &pol,
        "copy",
        &format!("docker-archive:{}:busybox:latest", save.display()),
        &format!("oci:{}:x", out.display()),
    ])?;
    let copied = skopeo_json(&["inspect", "--config", &format!("oci:{}:x", out.display())])?;
    let diff_ids: Vec<&str> = bb.layers.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(copied["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    Ok(())
}

fn tar_member(tar: &Path, name: &str) -> Result<std::io::Cursor<Vec<u8>>> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(tar)
        .arg(name)
        .output()?;
    ensure!(out.status.success(), "tar -xOf {name}: {out:?}");
    Ok(std::io::Cursor::new(out.stdout))
}

#[test]
fn containerd_pulls_over_plain_http() -> Result<()> {
    let reg = Registry::start()?;
    images::push_standard(&reg)?;
    let ctrd = Containerd::start()?;
    for name in [
        "busybox:latest",
        "busybox:docker",
        "multiarch:latest",
        "zstd:latest",
    ] {
        let r = reg.reference(name);
        ctrd.ctr(&["images", "pull", "--plain-http", &r])?.check()?;
        let ls = ctrd.ctr(&["images", "ls", "-q"])?.check()?;
        ensure!(
            ls.stdout.lines().any(|l| l.trim() == r),
            "{r} not listed: {ls}"
        );
    }
    // Unpacked for this platform: the snapshot of the multiarch image has
    // the native platform's marker.
    let mounts = tempdir("ctr-mount-")?;
    let target = mounts.path().to_string_lossy().into_owned();
    let r = reg.reference("multiarch:latest");
    ctrd.ctr(&["images", "mount", &r, &target])?.check()?;
    let marker = std::fs::read_to_string(mounts.path().join(images::PLATFORM_FILE));
    let released = std::fs::read_to_string(mounts.path().join(images::RELEASE_FILE));
    let gone = mounts.path().join(images::REMOVED_FILE).exists();
    ctrd.ctr(&["images", "unmount", &target])?.check()?;
    assert_eq!(marker?, format!("linux/{}\n", oci_arch()));
    assert_eq!(released?, images::RELEASE_CONTENT);
    ensure!(
        !gone,
        "the whiteout did not delete {}",
        images::REMOVED_FILE
    );
    Ok(())
}

#[test]
fn bad_images_are_bad_as_intended() -> Result<()> {
    let reg = Registry::start()?;
    let c = reg.client();

    let wrong = images::push_wrong_digest(&reg, "bad", "wrong-digest")?;
    let err = c
        .get_blob("bad", &wrong.bad_digest)
        .expect_err("digest must mismatch");
    ensure!(format!("{err:#}").contains(&wrong.bad_digest), "{err:#}");
    let (_, m) = c.get_manifest("bad", "wrong-digest")?;
    assert_eq!(m, *wrong.image.manifest.data);

    let cut = images::push_truncated_blob(&reg, "bad", "truncated")?;
    let (h, body) = raw_request(
        &reg.addr(),
        "GET",
        &format!("/v2/bad/blobs/{}", cut.bad_digest),
        &[],
        &[],
    )?;
    ensure!(h.start[1] == "200", "{h:?}");
    let full = cut.image.layer_blobs[1].size();
    assert_eq!(body.len() as u64, full / 2);

    // Up to the registry's 4 MiB limit, a padded manifest goes through it.
    let digest = images::push_huge_manifest(&reg, "bad", "big", 3 << 20)?;
    let (_, m) = c.get_manifest("bad", "big")?;
    ensure!(m.len() > 3 << 20, "{} bytes", m.len());
    assert_eq!(sha256_digest(&m), digest);
    ensure!(images::push_huge_manifest(&reg, "bad", "too-big", 5 << 20).is_err());
    // Beyond it, the proxy serves one.
    let proxy = RegistryProxy::start(&reg)?;
    let pc = Client::new(&proxy.url(), None);
    let digest = images::serve_huge_manifest(&reg, &proxy, "bad", "huge", 5 << 20)?;
    for reference in ["huge", digest.as_str()] {
        let (ct, m) = pc.get_manifest("bad", reference)?;
        assert_eq!(ct, oci::OCI_MANIFEST);
        ensure!(m.len() > 5 << 20, "{} bytes", m.len());
        assert_eq!(sha256_digest(&m), digest);
    }
    let digest = images::serve_unknown_manifest_type(&reg, &proxy, "bad", "unknown-type")?;
    let (ct, m) = pc.get_manifest("bad", "unknown-type")?;
    assert_eq!(ct, images::UNKNOWN_MEDIA_TYPE);
    assert_eq!(sha256_digest(&m), digest);
    // Its blobs are there: only the media type is wrong.
    let v: Value = serde_json::from_slice(&m)?;
    let config = v["config"]["digest"].as_str().context("config digest")?;
    pc.get_blob("bad", config)?;

    let weird = images::unknown_layer_type()?;
    c.push("bad", "unknown-layer", &weird)?;
    let (_, m) = c.get_manifest("bad", "unknown-layer")?;
    ensure!(
        String::from_utf8_lossy(&m).contains(images::UNKNOWN_MEDIA_TYPE),
        "media type lost"
    );
    let weird_idx = images::unknown_index_entry_type()?;
    c.push("bad", "unknown-entry", &weird_idx)?;

    for kind in EvilLayer::ALL {
        let img = images::evil(kind)?;
        c.push("evil", &format!("{kind:?}").to_lowercase(), &img)?;
        let listing = tar_listing(&img.layers[1].tar()?)?;
        ensure!(
            listing.contains(kind.offending_path()),
            "{kind:?}: {listing}"
        );
    }
    // A tar cut in the middle of a file: GNU tar fails on it too.
    let cut = images::truncated_tar()?;
    c.push("bad", "truncated-tar", &cut)?;
    let tar_file = tempdir("cut-tar-")?;
    let f = tar_file.path().join("cut.tar");
    std::fs::write(&f, cut.layers[1].tar()?)?;
    let out = Command::new("tar").arg("-tvf").arg(&f).output()?;
    ensure!(!out.status.success(), "tar accepted a truncated archive");
    ensure!(String::from_utf8_lossy(&out.stdout).contains("ok.txt"));
    assert_eq!(sha256_digest(&cut.layers[1].tar()?), cut.layers[1].diff_id);

    let abs = tar_listing(&images::evil(EvilLayer::AbsolutePath)?.layers[1].tar()?)?;
    ensure!(abs.contains(" /etc/berth-evil"), "{abs}");
    Ok(())
}

#[test]
fn proxy_injects_faults() -> Result<()> {
    let reg = Registry::start()?;
    let bb = images::busybox()?;
    reg.push("busybox", "latest", bb)?;
    let proxy = RegistryProxy::start(&reg)?;
    let c = Client::new(&proxy.url(), None);
    let layer = &bb.layer_blobs[0];
    let path = format!("/v2/busybox/blobs/{}", layer.digest);

    // Twice 503, then through.
    proxy.add_rule(Rule::new(&layer.digest, Fault::Status(503)).times(2));
    for _ in 0..2 {
        ensure!(c.get_blob("busybox", &layer.digest).is_err());
    }
    assert_eq!(c.get_blob("busybox", &layer.digest)?, *layer.data);
    assert_eq!(proxy.count("GET", &layer.digest), 3);

    // Cut after 1000 bytes: the full length is announced, 1000 bytes come,
    // then the connection closes.
    proxy.add_rule(Rule::new(&layer.digest, Fault::CutAfter(1000)).times(1));
    let mut conn = std::net::TcpStream::connect(proxy.addr())?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut all = Vec::new();
    conn.read_to_end(&mut all)?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no response head")?;
    let head = String::from_utf8_lossy(&all[..split]).to_ascii_lowercase();
    ensure!(
        head.contains(&format!("content-length: {}", layer.size())),
        "{head}"
    );
    assert_eq!(all.len() - split - 4, 1000);
    assert_eq!(all[split + 4..], layer.data[..1000]);
    // The rule was used up: the next download is whole.
    assert_eq!(c.get_blob("busybox", &layer.digest)?, *layer.data);

    // A redirect to the blob store, which honours Range.
    proxy.add_rule(Rule::new("/blobs/", Fault::RedirectToBlobStore).method("GET"));
    let (h, _) = raw_request(&proxy.addr(), "GET", &path, &[], &[])?;
    assert_eq!(h.start[1], "307");
    let location = h.header("location").context("no Location")?.to_string();
    let rest = location.strip_prefix("http://").context("location")?;
    let (host, target) = rest.split_at(rest.find('/').context("location path")?);
    assert_eq!(host, proxy.blobstore_addr());
    let (h, body) = raw_request(host, "GET", target, &[("Range", "bytes=100-")], &[])?;
    assert_eq!(h.start[1], "206");
    assert_eq!(body, layer.data[100..]);
    let (h, body) = raw_request(host, "GET", target, &[], &[])?;
    assert_eq!(h.start[1], "200");
    assert_eq!(body, *layer.data);
    proxy.clear_rules();

    // A canned manifest with a media type nobody knows.
    proxy.add_rule(Rule::new(
        "/manifests/weird",
        Fault::Respond {
            status: 200,
            headers: vec![("Content-Type".into(), images::UNKNOWN_MEDIA_TYPE.into())],
            body: b"{\"schemaVersion\":2}".to_vec(),
        },
    ));
    let (ct, body) = c.get_manifest("busybox", "weird")?;
    assert_eq!(ct, images::UNKNOWN_MEDIA_TYPE);
    assert_eq!(body, b"{\"schemaVersion\":2}");

    // Uploads through the proxy work: Locations point back at it.
    let img = Image::new(
        Format::Oci,
        &ImageConfig::default(),
        vec![
            LayerBuilder::new()
                .entry(Entry::file("via-proxy", "x"))
                .build(Compression::Gzip)?,
        ],
    )?;
    c.push("viaproxy", "latest", &img)?;
    assert_eq!(
        reg.client().get_manifest("viaproxy", "latest")?.1,
        *img.manifest.data
    );
    ensure!(proxy.count("PUT", "/v2/viaproxy/blobs/uploads/") >= 2);
    Ok(())
}

#[test]
fn big_image_is_about_100_mb() -> Result<()> {
    let t = Instant::now();
    let big = images::big()?;
    eprintln!("big image built in {:?}", t.elapsed());
    let size = big.size();
    ensure!((90 << 20..130 << 20).contains(&size), "{size} bytes");
    let t = Instant::now();
    let reg = Registry::start()?;
    reg.push("big", "latest", big)?;
    eprintln!("big image pushed in {:?}", t.elapsed());
    let ctrd = Containerd::start()?;
    let t = Instant::now();
    ctrd.ctr(&[
        "images",
        "pull",
        "--plain-http",
        &reg.reference("big:latest"),
    ])?
    .check()?;
    eprintln!("ctr pulled the big image in {:?}", t.elapsed());
    Ok(())
}
