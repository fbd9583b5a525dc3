use std::io::Write;

use proptest::prelude::*;
use rstest::rstest;

use super::*;
use crate::static_pod::{CONFIG_HASH_ANNOTATION, identify};

const WEB: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: kube-system
spec:
  containers:
  - name: nginx
    image: nginx:1.27
    ports:
    - containerPort: 80
      hostPort: 8080
    resources:
      limits:
        cpu: 1
        memory: 64Mi
";

const DB: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: db
spec:
  containers:
  - name: postgres
    image: postgres:17
";

fn path() -> &'static Path {
    Path::new("/etc/berth/manifests/pods.yaml")
}

fn node() -> NodeName {
    NodeName::new("Node1").unwrap()
}

fn names(pods: &[(DocRef, Pod)]) -> Vec<String> {
    pods.iter()
        .map(|(_, p)| p.metadata.name.clone().unwrap_or_default())
        .collect()
}

fn messages(errors: &[ManifestError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

#[test]
fn yaml_single_pod() {
    let pods = parse(WEB, path()).unwrap();
    assert_eq!(names(&pods), ["web"]);
    let (doc, pod) = &pods[0];
    assert_eq!(
        *doc,
        DocRef {
            document: 1,
            item: None
        }
    );
    let container = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.image.as_deref(), Some("nginx:1.27"));
    assert_eq!(container.ports.as_ref().unwrap()[0].host_port, Some(8080));
    // A bare number is a quantity too.
    let limits = container
        .resources
        .as_ref()
        .unwrap()
        .limits
        .as_ref()
        .unwrap();
    assert_eq!(limits["cpu"].0, "1");
}

#[test]
fn yaml_several_documents_and_empty_ones() {
    let text = format!("---\n# only a comment\n---\n{WEB}---\n---\n{DB}\n---\n");
    let pods = parse(&text, path()).unwrap();
    assert_eq!(names(&pods), ["web", "db"]);
    // Documents count the non-empty ones.
    assert_eq!(pods[1].0.document, 2);
}

#[rstest]
#[case::empty("")]
#[case::blank("\n\n  \n")]
#[case::comments("# nothing here\n")]
#[case::separators("---\n---\n")]
#[case::json_null("null")]
fn nothing_is_no_pod(#[case] text: &str) {
    assert!(parse(text, path()).unwrap().is_empty());
}

#[test]
fn json_object_and_stream() {
    let one = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web"},"spec":{"containers":[{"name":"a","image":"busybox"}]}}"#;
    assert_eq!(names(&parse(one, path()).unwrap()), ["web"]);
    let two = format!("{one}\n{}", one.replace("\"web\"", "\"web2\""));
    assert_eq!(names(&parse(&two, path()).unwrap()), ["web", "web2"]);
}

#[test]
fn lists_of_pods() {
    let list = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"},"spec":{"containers":[{"name":"c","image":"i"}]}},
        {"apiVersion":"v1","kind":"Pod","metadata":{"name":"b"},"spec":{"containers":[{"name":"c","image":"i"}]}}]}"#;
    let pods = parse(list, path()).unwrap();
    assert_eq!(names(&pods), ["a", "b"]);
    assert_eq!(
        pods[1].0,
        DocRef {
            document: 1,
            item: Some(1)
        }
    );

    let pod_list = "apiVersion: v1\nkind: PodList\nitems:\n- metadata: {name: a}\n  spec: {containers: [{name: c, image: i}]}\n";
    assert_eq!(names(&parse(pod_list, path()).unwrap()), ["a"]);

    let mixed = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Service","metadata":{"name":"s"}}]}"#;
    let errors = parse(mixed, path()).unwrap_err();
    assert_eq!(
        messages(&errors),
        [format!(
            "{}: document 1 items[0]: apiVersion \"v1\", kind \"Service\" is not a pod: a manifest holds apiVersion \"v1\", kind \"Pod\" (or a v1 List of them)",
            path().display()
        )]
    );
}

#[rstest]
#[case::deployment(
    "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
    "apps/v1",
    "Deployment"
)]
#[case::pod_of_another_version("apiVersion: v2\nkind: Pod\nmetadata: {name: x}\n", "v2", "Pod")]
#[case::no_kind("apiVersion: v1\nmetadata: {name: x}\n", "v1", "")]
#[case::nothing("metadata: {name: x}\n", "", "")]
fn only_v1_pods(#[case] text: &str, #[case] api_version: &str, #[case] kind: &str) {
    let errors = parse(text, path()).unwrap_err();
    assert_eq!(errors.len(), 1);
    match &errors[0] {
        ManifestError::NotAPod {
            api_version: a,
            kind: k,
            ..
        } => assert_eq!((a.as_str(), k.as_str()), (api_version, kind)),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn scalars_and_lists_are_not_objects() {
    let errors = parse("just a string\n---\n- a\n- b\n", path()).unwrap_err();
    assert_eq!(
        messages(&errors),
        [
            format!(
                "{}: document 1: not a mapping but a string",
                path().display()
            ),
            format!("{}: document 2: not a mapping but a list", path().display()),
        ]
    );
}

#[test]
fn syntax_errors() {
    let yaml = parse("apiVersion: v1\nkind: Pod\n  metadata: [\n", path()).unwrap_err();
    assert!(
        matches!(yaml.as_slice(), [ManifestError::Yaml { .. }]),
        "{yaml:?}"
    );
    let json = parse("{\"apiVersion\": \"v1\",", path()).unwrap_err();
    assert!(
        matches!(json.as_slice(), [ManifestError::Json { .. }]),
        "{json:?}"
    );
    assert!(json[0].to_string().contains("line 1"), "{}", json[0]);
}

#[test]
fn wrong_types_name_the_field() {
    let text = WEB.replace("containerPort: 80", "containerPort: eighty");
    let errors = parse(&text, path()).unwrap_err();
    match errors.as_slice() {
        [
            ManifestError::Decode {
                doc,
                field,
                message,
                ..
            },
        ] => {
            assert_eq!(doc.document, 1);
            assert_eq!(field, "spec.containers[0].ports[0].containerPort");
            assert!(message.contains("eighty"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn one_bad_document_fails_the_file_with_all_errors() {
    let bad_kind = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n";
    let invalid = DB
        .replace("image: postgres:17", "image: \"\"")
        .replace("name: db", "name: Db");
    let text = format!("{WEB}---\n{bad_kind}---\n{invalid}");
    let errors = parse(&text, path()).unwrap_err();
    let p = path().display();
    assert_eq!(
        messages(&errors),
        [
            format!(
                "{p}: document 2: apiVersion \"v1\", kind \"Secret\" is not a pod: a manifest holds apiVersion \"v1\", kind \"Pod\" (or a v1 List of them)"
            ),
            format!(
                "{p}: document 3: invalid pod \"Db\": [metadata.name: Invalid value: \"Db\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*'), spec.containers[0].image: Required value]"
            ),
        ]
    );
}

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut file = File::create(&path).unwrap();
    file.write_all(content).unwrap();
    path
}

use std::fs::File;

#[test]
fn load_gives_static_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "pods.yaml",
        format!("{WEB}---\n{DB}").as_bytes(),
    );
    let pods = load(&path, &node()).unwrap();
    let full: Vec<String> = pods.iter().map(full_name).collect();
    assert_eq!(full, ["kube-system/web-node1", "default/db-node1"]);
    for pod in &pods {
        let uid = pod.metadata.uid.as_deref().unwrap();
        assert_eq!(
            pod.metadata.annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION],
            uid
        );
    }
    assert_ne!(pods[0].metadata.uid, pods[1].metadata.uid);
}

#[test]
fn uid_follows_content_not_formatting() {
    let dir = tempfile::tempdir().unwrap();
    let uid = |content: &str| {
        let path = write(dir.path(), "web.yaml", content.as_bytes());
        load(&path, &node()).unwrap()[0]
            .metadata
            .uid
            .clone()
            .unwrap()
    };
    let base = uid(WEB);
    assert_eq!(base, uid(WEB), "same file, same UID");
    let reformatted = format!(
        "# the web server\n{}",
        WEB.replace("name: web\n", "name: \"web\"   # quoted\n")
    );
    assert_eq!(
        base,
        uid(&reformatted),
        "comments and quoting are not content"
    );
    let json = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"kube-system"},"spec":{"containers":[{"name":"nginx","image":"nginx:1.27","ports":[{"containerPort":80,"hostPort":8080}],"resources":{"limits":{"cpu":"1","memory":"64Mi"}}}]}}"#;
    assert_eq!(base, uid(json), "the same pod in JSON");
    assert_ne!(
        base,
        uid(&WEB.replace("nginx:1.27", "nginx:1.28")),
        "a changed spec is a new pod"
    );
    assert_ne!(base, uid(&WEB.replace("memory: 64Mi", "memory: 65Mi")));
}

#[test]
fn load_errors() {
    let dir = tempfile::tempdir().unwrap();
    let binary = write(dir.path(), "binary", &[0xff, 0xfe, 0x00, 0x41]);
    assert!(matches!(
        load(&binary, &node()).unwrap_err().as_slice(),
        [ManifestError::NotText { .. }]
    ));

    let big = write(
        dir.path(),
        "big.yaml",
        &vec![b'#'; MAX_MANIFEST_BYTES as usize + 1],
    );
    assert!(matches!(
        load(&big, &node()).unwrap_err().as_slice(),
        [ManifestError::TooLarge { .. }]
    ));

    let missing = dir.path().join("missing.yaml");
    assert!(matches!(
        load(&missing, &node()).unwrap_err().as_slice(),
        [ManifestError::Read { .. }]
    ));

    assert!(matches!(
        load(dir.path(), &node()).unwrap_err().as_slice(),
        [ManifestError::NotAFile { .. }]
    ));

    let twice = write(
        dir.path(),
        "twice.yaml",
        format!("{DB}---\n{DB}").as_bytes(),
    );
    let errors = load(&twice, &node()).unwrap_err();
    assert_eq!(
        messages(&errors),
        [format!(
            "{0}: pod default/db-node1 is also defined in {0}",
            twice.display()
        )]
    );
}

#[test]
fn name_with_node_suffix_must_fit() {
    let dir = tempfile::tempdir().unwrap();
    let long = "a".repeat(250);
    let path = write(
        dir.path(),
        "long.yaml",
        DB.replace("name: db", &format!("name: {long}")).as_bytes(),
    );
    let errors = load(&path, &node()).unwrap_err();
    assert_eq!(
        messages(&errors),
        [format!(
            "{}: document 1: invalid pod \"{long}\": metadata.name: Invalid value: \"{long}-node1\": must be no more than 253 characters",
            path.display()
        )]
    );
}

fn label() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,20}[a-z0-9])?"
}

fn manifest_pod(name: &str, container: &str, image: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": container, "image": image}]},
    })
    .to_string()
}

proptest! {
    #[test]
    fn valid_pods_roundtrip_and_hash_stably(
        name in label(),
        container in label(),
        image in "[a-z]{1,12}(:[0-9]{1,3})?",
    ) {
        let text = manifest_pod(&name, &container, &image);
        let pods = parse(&text, path()).unwrap();
        prop_assert_eq!(pods.len(), 1);
        let pod = pods[0].1.clone();
        prop_assert_eq!(pod.metadata.name.as_deref(), Some(name.as_str()));
        // What was decoded reads back the same.
        let again = parse(&serde_json::to_string(&pod).unwrap(), path()).unwrap();
        prop_assert_eq!(&again[0].1, &pod);

        let first = identify(pod.clone(), path(), &node());
        let second = identify(again[0].1.clone(), path(), &node());
        prop_assert_eq!(&first.metadata.uid, &second.metadata.uid);
        prop_assert_eq!(first.metadata.name, Some(format!("{name}-node1")));

        let changed = parse(&manifest_pod(&name, &container, &format!("{image}x")), path()).unwrap();
        let changed = identify(changed[0].1.clone(), path(), &node());
        prop_assert_ne!(&first.metadata.uid, &changed.metadata.uid);
    }
}

#[test]
fn yaml_as_kubernetes_reads_it() {
    let text = format!(
        "{DB}  volumes:\n  - name: conf\n    configMap:\n      name: conf\n      defaultMode: 0644\n"
    );
    let text = text.replace(
        "    image: postgres:17\n",
        "    image: postgres:17\n    stdin: yes\n",
    );
    let pods = parse(&text, path()).unwrap();
    let spec = pods[0].1.spec.as_ref().unwrap();
    let volume = &spec.volumes.as_ref().unwrap()[0];
    assert_eq!(
        volume.config_map.as_ref().unwrap().default_mode,
        Some(0o644)
    );
    assert_eq!(spec.containers[0].stdin, Some(true));
}
