//! The client against the in-process fake registry (`fake.rs`).

use std::time::Duration;

use futures::StreamExt;
use oci_spec::image::MediaType;

use super::fake::{Fake, FakeAuth};
use super::*;
use crate::config::{HostConfig, MirrorConfig, RegistryConfig, RetryConfig};

const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn config() -> RegistryConfig {
    RegistryConfig {
        retry: RetryConfig {
            attempts: 4,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        },
        ..Default::default()
    }
}

fn client() -> RegistryClient {
    RegistryClient::new(&config()).unwrap()
}

fn reference(fake: &Fake, rest: &str) -> Reference {
    format!("{}/{rest}", fake.host()).parse().unwrap()
}

/// Deterministic bytes that do not compress or repeat in short periods.
fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Image {
    manifest: Vec<u8>,
    digest: Digest,
    config: Digest,
    layers: Vec<(Digest, Vec<u8>)>,
}

/// Pushes a config and `layers` blobs and a manifest naming them; the manifest
/// is served under each of `refs` plus its digest.
fn push_image(fake: &Fake, repo: &str, refs: &[&str], docker: bool, layers: &[Vec<u8>]) -> Image {
    let (mt, config_mt, layer_mt) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER)
    } else {
        (OCI_MANIFEST, OCI_CONFIG, OCI_LAYER)
    };
    let config_bytes = format!(
        r#"{{"architecture":"amd64","os":"linux","seed":{}}}"#,
        layers.len()
    )
    .into_bytes();
    let config = fake.add_blob(&config_bytes);
    let layers: Vec<(Digest, Vec<u8>)> = layers
        .iter()
        .map(|l| (fake.add_blob(l), l.clone()))
        .collect();
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "config": {"mediaType": config_mt, "size": config_bytes.len(), "digest": config.to_string()},
        "layers": layers.iter().map(|(d, l)| serde_json::json!({
            "mediaType": layer_mt, "size": l.len(), "digest": d.to_string()
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let digest = Digest::of(&manifest);
    let mut all: Vec<&str> = refs.to_vec();
    let d = digest.to_string();
    all.push(&d);
    fake.add_manifest(repo, &all, mt, &manifest);
    Image {
        manifest,
        digest,
        config,
        layers,
    }
}

/// An index over `entries` (platform, manifest digest, manifest size).
fn push_index(
    fake: &Fake,
    repo: &str,
    tag: &str,
    docker: bool,
    entries: &[(&str, &Image)],
) -> Digest {
    let (mt, entry_mt) = if docker {
        (DOCKER_LIST, DOCKER_MANIFEST)
    } else {
        (OCI_INDEX, OCI_MANIFEST)
    };
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(platform, img)| {
            let p: Platform = platform.parse().unwrap();
            let mut plat = serde_json::json!({"os": p.os, "architecture": p.architecture});
            if let Some(v) = p.variant {
                plat["variant"] = v.into();
            }
            serde_json::json!({
                "mediaType": entry_mt, "size": img.manifest.len(),
                "digest": img.digest.to_string(), "platform": plat,
            })
        })
        .collect();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": mt, "manifests": manifests,
    }))
    .unwrap();
    let digest = Digest::of(&index);
    fake.add_manifest(repo, &[tag, &digest.to_string()], mt, &index);
    digest
}

async fn collect(mut s: BlobStream) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[tokio::test]
async fn resolves_an_oci_manifest_by_tag() {
    let fake = Fake::start().await;
    let img = push_image(&fake, "app", &["v1"], false, &[data(100, 1), data(50, 2)]);
    let r = client()
        .resolve(&reference(&fake, "app:v1"), &Platform::default(), None)
        .await
        .unwrap();
    assert_eq!(r.repo_digest, img.digest);
    assert_eq!(r.manifest_digest, img.digest);
    assert_eq!(r.manifest_bytes, img.manifest);
    assert_eq!(r.index_bytes, None);
    assert_eq!(r.media_type, OCI_MANIFEST);
    assert_eq!(r.manifest.layers().len(), 2);
    assert_eq!(
        r.manifest.config().digest().to_string(),
        img.config.to_string()
    );
    assert_eq!(r.manifest.config().media_type(), &MediaType::ImageConfig);
    let reqs = fake.requests("/manifests/v1");
    assert_eq!(reqs.len(), 1);
    let accept = reqs[0].accept.clone().unwrap();
    for mt in [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST] {
        assert!(accept.contains(mt), "{accept}");
    }
}

#[tokio::test]
async fn resolves_docker_schema2_keeping_media_types() {
    let fake = Fake::start().await;
    let img = push_image(&fake, "lib/app", &["latest"], true, &[data(10, 3)]);
    let r = client()
        .resolve(&reference(&fake, "lib/app"), &Platform::default(), None)
        .await
        .unwrap();
    assert_eq!(r.media_type, DOCKER_MANIFEST);
    assert_eq!(r.manifest_digest, img.digest);
    assert_eq!(
        r.manifest.config().media_type(),
        &MediaType::Other(DOCKER_CONFIG.into())
    );
    assert_eq!(
        r.manifest.layers()[0].media_type(),
        &MediaType::Other(DOCKER_LAYER.into())
    );
}

#[tokio::test]
async fn resolves_by_digest_and_verifies_it() {
    let fake = Fake::start().await;
    let img = push_image(&fake, "app", &[], false, &[data(10, 4)]);
    let r = reference(&fake, &format!("app@{}", img.digest));
    let resolved = client()
        .resolve(&r, &Platform::default(), None)
        .await
        .unwrap();
    assert_eq!(resolved.repo_digest, img.digest);
    assert_eq!(
        fake.requests(&format!("/manifests/{}", img.digest)).len(),
        1
    );

    // A registry that serves other content under that digest is caught.
    let other = push_image(&fake, "app", &[], false, &[data(10, 5)]);
    fake.add_manifest(
        "app",
        &[&img.digest.to_string()],
        OCI_MANIFEST,
        &other.manifest,
    );
    let err = client()
        .resolve(&r, &Platform::default(), None)
        .await
        .unwrap_err();
    match &err {
        RegistryError::ManifestDigest {
            expected,
            actual,
            url,
            ..
        } => {
            assert_eq!(*expected, img.digest);
            assert_eq!(*actual, other.digest);
            assert!(url.contains(&fake.host()), "{url}");
        }
        e => panic!("unexpected {e}"),
    }
    assert!(err.to_string().contains(&img.digest.to_string()), "{err}");
}

#[tokio::test]
async fn picks_the_platform_from_an_index() {
    let fake = Fake::start().await;
    let amd = push_image(&fake, "multi", &[], false, &[data(10, 6)]);
    let arm64 = push_image(&fake, "multi", &[], false, &[data(10, 7)]);
    let armv7 = push_image(&fake, "multi", &[], false, &[data(10, 8)]);
    let index = push_index(
        &fake,
        "multi",
        "v1",
        false,
        &[
            ("linux/arm/v7", &armv7),
            ("linux/arm64/v8", &arm64),
            ("linux/amd64", &amd),
        ],
    );
    let r = reference(&fake, "multi:v1");
    let c = client();
    let got = c.resolve(&r, &Platform::default(), None).await.unwrap();
    assert_eq!(got.repo_digest, index);
    assert_eq!(got.manifest_digest, amd.digest);
    assert!(got.index_bytes.is_some());
    let got = c
        .resolve(&r, &Platform::new("linux", "arm64", None), None)
        .await
        .unwrap();
    assert_eq!(got.manifest_digest, arm64.digest, "arm64 means arm64/v8");
    let got = c
        .resolve(&r, &"linux/arm".parse().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(got.manifest_digest, armv7.digest);
    let err = c
        .resolve(&r, &"linux/s390x".parse().unwrap(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::NoMatchingPlatform { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/arm64/v8"),
        "{msg}"
    );

    // The same as a Docker manifest list.
    let list = push_index(
        &fake,
        "multi",
        "list",
        true,
        &[("linux/arm64", &arm64), ("linux/amd64", &amd)],
    );
    let got = c
        .resolve(
            &reference(&fake, "multi:list"),
            &Platform::new("linux", "arm64", Some("v8")),
            None,
        )
        .await
        .unwrap();
    assert_eq!(got.repo_digest, list);
    assert_eq!(got.manifest_digest, arm64.digest);
}

#[tokio::test]
async fn index_entry_with_wrong_content_is_refused() {
    let fake = Fake::start().await;
    let good = push_image(&fake, "multi", &[], false, &[data(10, 9)]);
    let evil = push_image(&fake, "multi", &[], false, &[data(10, 10)]);
    push_index(&fake, "multi", "v1", false, &[("linux/amd64", &good)]);
    fake.add_manifest(
        "multi",
        &[&good.digest.to_string()],
        OCI_MANIFEST,
        &evil.manifest,
    );
    let err = client()
        .resolve(&reference(&fake, "multi:v1"), &Platform::default(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::ManifestDigest { .. }), "{err}");
}

#[tokio::test]
async fn unknown_media_types_are_refused() {
    let fake = Fake::start().await;
    let schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    fake.add_manifest(
        "old",
        &["v1"],
        schema1,
        format!(r#"{{"schemaVersion":1,"mediaType":"{schema1}"}}"#).as_bytes(),
    );
    fake.add_manifest("weird", &["v1"], "text/plain", br#"{"schemaVersion":2}"#);
    let c = client();
    let err = c
        .resolve(&reference(&fake, "old:v1"), &Platform::default(), None)
        .await
        .unwrap_err();
    match &err {
        RegistryError::UnsupportedMediaType { media_type, .. } => assert_eq!(media_type, schema1),
        e => panic!("unexpected {e}"),
    }
    assert!(err.to_string().contains("old:v1"), "{err}");
    let err = c
        .resolve(&reference(&fake, "weird:v1"), &Platform::default(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::UnsupportedMediaType { media_type, .. } if media_type == "text/plain"),
        "{err}"
    );
}

#[tokio::test]
async fn oversize_manifests_are_refused() {
    let fake = Fake::start().await;
    let mut big =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","pad":""#
            .to_vec();
    big.extend(std::iter::repeat_n(b'x', MAX_MANIFEST_SIZE as usize));
    big.extend_from_slice(b"\"}");
    fake.add_manifest("big", &["v1"], OCI_MANIFEST, &big);
    let err = client()
        .resolve(&reference(&fake, "big:v1"), &Platform::default(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::ManifestTooLarge { limit, .. } if limit == MAX_MANIFEST_SIZE),
        "{err}"
    );
}

#[tokio::test]
async fn missing_manifest_is_not_found_with_the_registry_message() {
    let fake = Fake::start().await;
    let err = client()
        .resolve(&reference(&fake, "nothing:v1"), &Platform::default(), None)
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("MANIFEST_UNKNOWN") && msg.contains("nothing:v1"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("http://{}/v2/nothing/manifests/v1", fake.host())),
        "{msg}"
    );
}

#[tokio::test]
async fn basic_auth() {
    let fake = Fake::start().await;
    push_image(&fake, "private", &["v1"], false, &[data(10, 11)]);
    fake.with(|s| {
        s.auth = FakeAuth::Basic {
            user: "alice".into(),
            pass: "s3cret".into(),
        }
    });
    let r = reference(&fake, "private:v1");
    let c = client();
    let err = c.resolve(&r, &Platform::default(), None).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("none were given"), "{err}");

    let wrong = Credentials::Basic {
        username: "alice".into(),
        password: "nope".into(),
    };
    let err = c
        .resolve(&r, &Platform::default(), Some(&wrong))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(
        !err.to_string().contains("nope"),
        "no secrets in errors: {err}"
    );

    let right = Credentials::Basic {
        username: "alice".into(),
        password: "s3cret".into(),
    };
    let c = client();
    c.resolve(&r, &Platform::default(), Some(&right))
        .await
        .unwrap();
    let before = fake.requests("/manifests/").len();
    c.resolve(&r, &Platform::default(), Some(&right))
        .await
        .unwrap();
    let after = fake.requests("/manifests/");
    assert_eq!(
        after.len(),
        before + 1,
        "Basic is sent up front once learned"
    );
    assert!(
        after
            .last()
            .unwrap()
            .authorization
            .as_deref()
            .unwrap()
            .starts_with("Basic ")
    );
}

#[tokio::test]
async fn credentials_from_a_docker_config_file() {
    let fake = Fake::start().await;
    push_image(&fake, "private", &["v1"], false, &[data(10, 12)]);
    fake.with(|s| {
        s.auth = FakeAuth::Basic {
            user: "bob".into(),
            pass: "pw".into(),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("bob:pw");
    std::fs::write(
        &path,
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{auth}"}}}}}}"#,
            fake.host()
        ),
    )
    .unwrap();
    let mut cfg = config();
    cfg.config_path = Some(path);
    let c = RegistryClient::new(&cfg).unwrap();
    c.resolve(&reference(&fake, "private:v1"), &Platform::default(), None)
        .await
        .unwrap();

    // Static credentials from the runtime config work too.
    let mut cfg = config();
    cfg.hosts.insert(
        fake.host(),
        HostConfig {
            username: Some("bob".into()),
            password: Some("pw".into()),
            ..Default::default()
        },
    );
    RegistryClient::new(&cfg)
        .unwrap()
        .resolve(&reference(&fake, "private:v1"), &Platform::default(), None)
        .await
        .unwrap();
}

use base64::Engine as _;

#[tokio::test]
async fn bearer_tokens_are_fetched_once_and_cached() {
    let fake = Fake::start().await;
    let img = push_image(
        &fake,
        "team/app",
        &["v1"],
        false,
        &[data(1000, 13), data(2000, 14), data(3000, 15)],
    );
    fake.with(|s| {
        s.auth = FakeAuth::Bearer {
            user_pass: Some(("carol".into(), "pw".into())),
            refresh_token: None,
        }
    });
    let creds = Credentials::Basic {
        username: "carol".into(),
        password: "pw".into(),
    };
    let r = reference(&fake, "team/app:v1");
    let c = client();
    c.resolve(&r, &Platform::default(), Some(&creds))
        .await
        .unwrap();
    // Many concurrent downloads after that: all reuse the one token.
    let mut tasks = Vec::new();
    for (d, l) in img.layers.clone() {
        let (c, r, creds) = (c.clone(), r.clone(), creds.clone());
        tasks.push(tokio::spawn(async move {
            let s = c
                .fetch_blob(&r, &d, l.len() as u64, 0, Some(&creds))
                .await?;
            Ok::<_, RegistryError>((collect(s).await?, l))
        }));
    }
    for t in tasks {
        let (got, want) = t.await.unwrap().unwrap();
        assert_eq!(got, want);
    }
    let tokens = fake.token_requests();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0].method, "GET");
    assert!(
        tokens[0].query.contains("service=fake-registry"),
        "{}",
        tokens[0].query
    );
    assert!(
        tokens[0]
            .query
            .contains("scope=repository%3Ateam%2Fapp%3Apull"),
        "{}",
        tokens[0].query
    );
    assert!(
        tokens[0]
            .authorization
            .as_deref()
            .unwrap()
            .starts_with("Basic ")
    );
    for l in fake.requests("/blobs/") {
        assert_eq!(l.authorization.as_deref(), Some("Bearer tok-1"));
    }

    // Other credentials never reuse carol's token.
    let anon = client();
    let err = anon
        .resolve(&r, &Platform::default(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains("token server"), "{err}");

    // A token the registry stops accepting is replaced.
    fake.with(|s| s.tokens.clear());
    c.resolve(&r, &Platform::default(), Some(&creds))
        .await
        .unwrap();
    assert_eq!(fake.token_requests().len(), 3);
}

#[tokio::test]
async fn concurrent_first_requests_share_one_token_request() {
    let fake = Fake::start().await;
    let layers: Vec<Vec<u8>> = (0..6).map(|i| data(500, 20 + i)).collect();
    let img = push_image(&fake, "app", &["v1"], false, &layers);
    fake.with(|s| {
        s.auth = FakeAuth::Bearer {
            user_pass: None,
            refresh_token: None,
        }
    });
    let c = client();
    let r = reference(&fake, "app:v1");
    let tasks: Vec<_> = img
        .layers
        .iter()
        .cloned()
        .map(|(d, l)| {
            let (c, r) = (c.clone(), r.clone());
            tokio::spawn(async move {
                c.fetch_blob_bytes(&r, &d, 1 << 20, None)
                    .await
                    .map(|b| b == l)
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap());
    }
    assert_eq!(fake.token_requests().len(), 1);
}

#[tokio::test]
async fn identity_tokens_are_exchanged_with_a_post() {
    let fake = Fake::start().await;
    push_image(&fake, "app", &["v1"], false, &[data(10, 16)]);
    fake.with(|s| {
        s.auth = FakeAuth::Bearer {
            user_pass: None,
            refresh_token: Some("refresh-123".into()),
        }
    });
    let creds = Credentials::IdentityToken("refresh-123".into());
    client()
        .resolve(
            &reference(&fake, "app:v1"),
            &Platform::default(),
            Some(&creds),
        )
        .await
        .unwrap();
    let t = fake.token_requests();
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].method, "POST");
    assert!(
        t[0].body.contains("grant_type=refresh_token"),
        "{}",
        t[0].body
    );
    assert!(
        t[0].body.contains("refresh_token=refresh-123"),
        "{}",
        t[0].body
    );
    assert!(t[0].body.contains("service=fake-registry"), "{}", t[0].body);
}

#[tokio::test]
async fn registry_tokens_are_used_as_is() {
    let fake = Fake::start().await;
    push_image(&fake, "app", &["v1"], false, &[data(10, 17)]);
    fake.with(|s| {
        s.auth = FakeAuth::Bearer {
            user_pass: None,
            refresh_token: None,
        };
        s.tokens.push("given".into());
    });
    let creds = Credentials::RegistryToken("given".into());
    client()
        .resolve(
            &reference(&fake, "app:v1"),
            &Platform::default(),
            Some(&creds),
        )
        .await
        .unwrap();
    assert!(fake.token_requests().is_empty());
    assert_eq!(
        fake.requests("/manifests/")[0].authorization.as_deref(),
        Some("Bearer given")
    );
}

#[tokio::test]
async fn redirects_to_storage_do_not_carry_the_registry_authorization() {
    let registry = Fake::start().await;
    let storage = Fake::start().await;
    let layer = data(70_000, 18);
    let img = push_image(
        &registry,
        "app",
        &["v1"],
        false,
        std::slice::from_ref(&layer),
    );
    let d = storage.add_blob(&layer);
    let config_bytes = registry.with(|s| s.blobs[&img.config.to_string()].clone());
    storage.add_blob(&config_bytes);
    registry.with(|s| {
        s.auth = FakeAuth::Bearer {
            user_pass: None,
            refresh_token: None,
        };
        s.redirect_blobs_to = Some(storage.url());
        // Only storage has the bytes now.
        s.blobs.clear();
    });
    let c = client();
    let r = reference(&registry, "app:v1");
    let s = c
        .fetch_blob(&r, &d, layer.len() as u64, 0, None)
        .await
        .unwrap();
    assert_eq!(collect(s).await.unwrap(), layer);
    let cfg = c
        .fetch_blob_bytes(&r, &img.config, 4096, None)
        .await
        .unwrap();
    assert_eq!(cfg, config_bytes);
    let reg = registry.requests("/blobs/");
    assert!(
        reg.iter().any(|l| l.authorization.is_some()),
        "registry got the token"
    );
    let got = storage.requests("/storage/");
    assert_eq!(got.len(), 2);
    for l in got {
        assert_eq!(
            l.authorization, None,
            "Authorization leaked to storage: {l:?}"
        );
        assert_eq!(l.query, "sig=secret");
    }
}

#[tokio::test]
async fn retries_5xx_then_succeeds_and_gives_up_after_the_attempts() {
    let fake = Fake::start().await;
    push_image(&fake, "app", &["v1"], false, &[data(10, 19)]);
    fake.with(|s| s.fail_next = 2);
    let r = reference(&fake, "app:v1");
    client()
        .resolve(&r, &Platform::default(), None)
        .await
        .unwrap();
    assert_eq!(fake.requests("/manifests/v1").len(), 3);

    fake.with(|s| s.fail_next = 100);
    let err = client()
        .resolve(&r, &Platform::default(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Status { status: 503, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("UNAVAILABLE"), "{err}");
    assert_eq!(
        fake.requests("/manifests/v1").len(),
        3 + 4,
        "4 attempts configured"
    );
}

#[tokio::test]
async fn a_cut_blob_download_resumes_with_range() {
    let fake = Fake::start().await;
    let layer = data(1 << 20, 21);
    let d = fake.add_blob(&layer);
    fake.with(|s| {
        s.cut_after = 300_000;
        s.cuts = 2;
    });
    let r = reference(&fake, "app:v1");
    let s = client()
        .fetch_blob(&r, &d, layer.len() as u64, 0, None)
        .await
        .unwrap();
    assert_eq!(s.start, 0);
    let got = collect(s).await.unwrap();
    assert!(got == layer, "content differs after resuming");
    let ranges: Vec<Option<String>> = fake
        .requests("/blobs/")
        .into_iter()
        .map(|l| l.range)
        .collect();
    assert_eq!(
        ranges,
        [
            None,
            Some("bytes=300000-".into()),
            Some("bytes=600000-".into())
        ]
    );
}

#[tokio::test]
async fn a_cut_download_from_a_server_ignoring_range_skips_what_it_has() {
    let fake = Fake::start().await;
    let layer = data(1 << 20, 22);
    let d = fake.add_blob(&layer);
    fake.with(|s| {
        s.cut_after = 400_000;
        s.cuts = 1;
        s.ignore_range = true;
    });
    let r = reference(&fake, "app:v1");
    let c = client();
    let got = collect(
        c.fetch_blob(&r, &d, layer.len() as u64, 0, None)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(got == layer);
    let ranges: Vec<Option<String>> = fake
        .requests("/blobs/")
        .into_iter()
        .map(|l| l.range)
        .collect();
    assert_eq!(ranges, [None, Some("bytes=400000-".into())]);

    // Asked to resume at an offset, such a server starts over: start says so.
    let s = c
        .fetch_blob(&r, &d, layer.len() as u64, 1000, None)
        .await
        .unwrap();
    assert_eq!(s.start, 0);
    assert!(collect(s).await.unwrap() == layer);
}

#[tokio::test]
async fn resumes_from_an_offset() {
    let fake = Fake::start().await;
    let layer = data(10_000, 23);
    let d = fake.add_blob(&layer);
    let r = reference(&fake, "app:v1");
    let c = client();
    let s = c
        .fetch_blob(&r, &d, layer.len() as u64, 4000, None)
        .await
        .unwrap();
    assert_eq!(s.start, 4000);
    assert_eq!(collect(s).await.unwrap(), layer[4000..]);
    let s = c
        .fetch_blob(&r, &d, layer.len() as u64, 10_000, None)
        .await
        .unwrap();
    assert!(collect(s).await.unwrap().is_empty());
    let err = c
        .fetch_blob(&r, &d, layer.len() as u64, 10_001, None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Offset { .. }), "{err}");
}

#[tokio::test]
async fn wrong_blob_sizes_are_errors() {
    let fake = Fake::start().await;
    let layer = data(5000, 24);
    let d = fake.add_blob(&layer);
    let r = reference(&fake, "app:v1");
    let c = client();
    // The manifest says more than the registry has: a truncated blob.
    let err = c.fetch_blob(&r, &d, 6000, 0, None).await.unwrap_err();
    match &err {
        RegistryError::BlobSize {
            expected, received, ..
        } => assert_eq!((*expected, *received), (6000, 5000)),
        e => panic!("unexpected {e}"),
    }
    assert!(err.to_string().contains(&d.to_string()), "{err}");
    // Less than the registry sends.
    let err = c.fetch_blob(&r, &d, 4000, 0, None).await.unwrap_err();
    assert!(matches!(err, RegistryError::BlobSize { .. }), "{err}");

    // Without Content-Length the shortfall shows at the end of the stream,
    // after an attempt to resume past what the registry has.
    fake.with(|s| s.truncate_to = Some(3000));
    let s = c.fetch_blob(&r, &d, 5000, 0, None).await.unwrap();
    let err = collect(s).await.unwrap_err();
    match &err {
        RegistryError::BlobSize {
            expected, received, ..
        } => assert_eq!((*expected, *received), (5000, 3000)),
        e => panic!("unexpected {e}"),
    }
    let ranges: Vec<Option<String>> = fake
        .requests("/blobs/")
        .into_iter()
        .map(|l| l.range)
        .collect();
    assert_eq!(ranges.last().unwrap().as_deref(), Some("bytes=3000-"));
    // And one that sends more than it should is cut off with an error.
    fake.with(|s| s.truncate_to = Some(5000));
    let s = c.fetch_blob(&r, &d, 4000, 0, None).await.unwrap();
    let err = collect(s).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::BlobSize { expected: 4000, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn small_blobs_are_bounded_and_verified() {
    let fake = Fake::start().await;
    let blob = data(3000, 25);
    let d = fake.add_blob(&blob);
    let r = reference(&fake, "app:v1");
    let c = client();
    assert_eq!(c.fetch_blob_bytes(&r, &d, 3000, None).await.unwrap(), blob);
    let err = c.fetch_blob_bytes(&r, &d, 2999, None).await.unwrap_err();
    assert!(
        matches!(err, RegistryError::BlobTooLarge { limit: 2999, .. }),
        "{err}"
    );
    fake.with(|s| s.blobs.insert(d.to_string(), data(3000, 26)));
    let err = c.fetch_blob_bytes(&r, &d, 3000, None).await.unwrap_err();
    assert!(matches!(err, RegistryError::BlobDigest { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&d.to_string()) && msg.contains("app:v1"),
        "{msg}"
    );
}

fn dead_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

#[tokio::test]
async fn mirrors_are_tried_in_order_before_the_registry() {
    let upstream = Fake::start().await;
    let empty_mirror = Fake::start().await;
    let good_mirror = Fake::start().await;
    let layer = data(2000, 27);
    let img = push_image(
        &good_mirror,
        "app",
        &["v1"],
        false,
        std::slice::from_ref(&layer),
    );
    push_image(
        &upstream,
        "app",
        &["v1"],
        false,
        std::slice::from_ref(&layer),
    );
    let dead = dead_endpoint();
    let mut cfg = config();
    cfg.mirrors.insert(
        upstream.host(),
        MirrorConfig {
            endpoints: vec![
                empty_mirror.url(),
                dead.clone(),
                format!("{}/v2/", good_mirror.url()),
            ],
        },
    );
    let c = RegistryClient::new(&cfg).unwrap();
    let r = reference(&upstream, "app:v1");
    assert_eq!(
        c.endpoints(&r)
            .unwrap()
            .iter()
            .map(|e| e.base.to_string())
            .collect::<Vec<_>>(),
        [
            format!("{}/v2", empty_mirror.url()),
            format!("{dead}/v2"),
            format!("{}/v2", good_mirror.url()),
            format!("{}/v2", upstream.url()),
        ]
    );
    let got = c.resolve(&r, &Platform::default(), None).await.unwrap();
    assert_eq!(got.manifest_digest, img.digest);
    assert_eq!(empty_mirror.requests("/manifests/v1").len(), 1);
    assert_eq!(good_mirror.requests("/manifests/v1").len(), 1);
    assert!(upstream.requests("/").is_empty());
    let (d, _) = &img.layers[0];
    let blob = collect(
        c.fetch_blob(&r, d, layer.len() as u64, 0, None)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(blob, layer);
    assert!(upstream.requests("/").is_empty());

    // Without the image on any mirror, the registry itself serves it.
    good_mirror.with(|s| s.manifests.clear());
    c.resolve(&r, &Platform::default(), None).await.unwrap();
    assert_eq!(upstream.requests("/manifests/v1").len(), 1);

    // Nowhere at all: one error listing every endpoint, in order.
    upstream.with(|s| s.manifests.clear());
    let err = c.resolve(&r, &Platform::default(), None).await.unwrap_err();
    let RegistryError::AllEndpoints { errors, .. } = &err else {
        panic!("unexpected {err}");
    };
    assert_eq!(errors.len(), 4);
    assert!(
        matches!(errors[1], RegistryError::Connection { .. }),
        "{}",
        errors[1]
    );
    let msg = err.to_string();
    let at = |s: &str| msg.find(s).unwrap_or_else(|| panic!("{s} not in {msg}"));
    assert!(at(&empty_mirror.host()) < at(&dead[7..]));
    assert!(at(&dead[7..]) < at(&good_mirror.host()));
    assert!(at(&good_mirror.host()) < at(&format!("{}/v2/app", upstream.host())));
}

#[tokio::test]
async fn pull_credentials_are_not_sent_to_mirrors() {
    let upstream = Fake::start().await;
    let mirror = Fake::start().await;
    push_image(&upstream, "app", &["v1"], false, &[data(10, 28)]);
    push_image(&mirror, "app", &["v1"], false, &[data(10, 28)]);
    let basic = FakeAuth::Basic {
        user: "dave".into(),
        pass: "pw".into(),
    };
    upstream.with(|s| s.auth = basic.clone());
    mirror.with(|s| s.auth = basic);
    let mut cfg = config();
    cfg.mirrors.insert(
        upstream.host(),
        MirrorConfig {
            endpoints: vec![mirror.url()],
        },
    );
    let creds = Credentials::Basic {
        username: "dave".into(),
        password: "pw".into(),
    };
    let c = RegistryClient::new(&cfg).unwrap();
    c.resolve(
        &reference(&upstream, "app:v1"),
        &Platform::default(),
        Some(&creds),
    )
    .await
    .unwrap();
    assert!(
        mirror
            .requests("/")
            .iter()
            .all(|l| l.authorization.is_none())
    );
    assert_eq!(
        upstream.requests("/manifests/v1").len(),
        2,
        "challenge, then with credentials"
    );
}

#[tokio::test]
async fn plain_http_follows_the_config() {
    let fake = Fake::start().await;
    push_image(&fake, "app", &["v1"], false, &[data(10, 29)]);
    let r = reference(&fake, "app:v1");
    // Loopback: plain http by default.
    client()
        .resolve(&r, &Platform::default(), None)
        .await
        .unwrap();
    // Forced to https, the same server cannot be spoken to, and the error says where we went.
    let mut cfg = config();
    cfg.hosts.insert(
        fake.host(),
        HostConfig {
            plain_http: Some(false),
            ..Default::default()
        },
    );
    let err = RegistryClient::new(&cfg)
        .unwrap()
        .resolve(&r, &Platform::default(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Connection { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("https://{}/v2/app/manifests/v1", fake.host())),
        "{err}"
    );
}

#[test]
fn endpoints_for_common_registries() {
    let mut cfg = config();
    cfg.hosts.insert(
        "registry.local:5000".into(),
        HostConfig {
            plain_http: Some(true),
            ..Default::default()
        },
    );
    cfg.mirrors.insert(
        "docker.io".into(),
        MirrorConfig {
            endpoints: vec![
                "https://mirror.example.com/prefix".into(),
                "https://registry-1.docker.io".into(),
            ],
        },
    );
    let c = RegistryClient::new(&cfg).unwrap();
    let bases = |s: &str| {
        c.endpoints(&s.parse().unwrap())
            .unwrap()
            .into_iter()
            .map(|e| (e.base.to_string(), e.mirror, e.config_host))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        bases("busybox"),
        [
            (
                "https://mirror.example.com/prefix/v2".into(),
                true,
                "mirror.example.com".into()
            ),
            (
                "https://registry-1.docker.io/v2".into(),
                false,
                "docker.io".into()
            ),
        ],
        "listing the registry itself puts it at that position, once"
    );
    assert_eq!(
        bases("quay.io/a/b"),
        [("https://quay.io/v2".into(), false, "quay.io".into())]
    );
    assert_eq!(
        bases("registry.local:5000/a"),
        [(
            "http://registry.local:5000/v2".into(),
            false,
            "registry.local:5000".into()
        )]
    );
    assert_eq!(bases("localhost:5000/a")[0].0, "http://localhost:5000/v2");
}

#[test]
fn bad_client_config_is_refused() {
    let mut cfg = config();
    cfg.mirrors.insert(
        "docker.io".into(),
        MirrorConfig {
            endpoints: vec!["ftp://x".into()],
        },
    );
    let err = RegistryClient::new(&cfg).unwrap_err();
    assert!(err.to_string().contains("ftp://x"), "{err}");
    let mut cfg = config();
    cfg.hosts.insert(
        "a.io".into(),
        HostConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        },
    );
    let err = RegistryClient::new(&cfg).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
