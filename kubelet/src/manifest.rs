//! Pod manifest files: YAML or JSON text → validated pods with their static identity.
//!
//! A file holds one or more documents: YAML documents separated by `---`, or
//! (text starting with `{`) one or more JSON objects. Each document is a
//! `v1` `Pod`, or a `v1` `List`/`PodList` whose items are pods (items may
//! leave out `apiVersion` and `kind`). Empty (null) documents are skipped.
//!
//! A file is all or nothing: when any of its documents is bad, the file
//! yields every error it has (syntax, kind, decoding, each pod's validation)
//! and no pod, so that a half-edited file never runs half its pods. Upstream
//! reads exactly one pod per file; more per file is berth's extension.

use std::collections::HashSet;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use nix::fcntl::OFlag;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::static_pod::{self, NodeName};
use crate::validation::{self, FieldError, FieldErrors, FieldPath, names};

/// Manifests larger than this are refused unread: a pod is a few KiB, and
/// the directory may hold anything.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Which document of a file (1-based, counting non-empty documents), and
/// which item when the document is a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DocRef {
    /// The document, from 1.
    pub document: usize,
    /// The item of a `List`/`PodList` document, from 0 as in `items[0]`.
    pub item: Option<usize>,
}

impl fmt::Display for DocRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, " items[{item}]")?;
        }
        Ok(())
    }
}

/// What is wrong with a manifest file or one of its documents.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The manifest.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The path is not a regular file (nor a symlink to one).
    #[error("{}: not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is larger than [`MAX_MANIFEST_BYTES`].
    #[error("{}: {size} bytes is larger than a manifest may be ({MAX_MANIFEST_BYTES} bytes)", path.display())]
    TooLarge {
        /// The manifest.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file is not UTF-8 text.
    #[error("{}: not UTF-8 text (a manifest is YAML or JSON)", path.display())]
    NotText {
        /// The manifest.
        path: PathBuf,
    },
    /// The YAML does not parse.
    #[error("{}: not valid YAML: {source}", path.display())]
    Yaml {
        /// The manifest.
        path: PathBuf,
        /// The parser's error, with line and column (boxed: it is large).
        source: Box<serde_saphyr::Error>,
    },
    /// The JSON does not parse.
    #[error("{}: not valid JSON: {source}", path.display())]
    Json {
        /// The manifest.
        path: PathBuf,
        /// The parser's error, with line and column.
        source: serde_json::Error,
    },
    /// A document is not a mapping (or a list's `items` is not a list).
    #[error("{}: {doc}: {what}", path.display())]
    NotAnObject {
        /// The manifest.
        path: PathBuf,
        /// The document.
        doc: DocRef,
        /// What was found instead.
        what: String,
    },
    /// A document is some other kind of object.
    #[error("{}: {doc}: apiVersion {api_version:?}, kind {kind:?} is not a pod: a manifest holds apiVersion \"v1\", kind \"Pod\" (or a v1 List of them)", path.display())]
    NotAPod {
        /// The manifest.
        path: PathBuf,
        /// The document.
        doc: DocRef,
        /// Its `apiVersion`, empty when missing.
        api_version: String,
        /// Its `kind`, empty when missing.
        kind: String,
    },
    /// A field has the wrong type (a string for a number ...).
    #[error("{}: {doc}: {field}: {message}", path.display())]
    Decode {
        /// The manifest.
        path: PathBuf,
        /// The document.
        doc: DocRef,
        /// The field's path.
        field: String,
        /// What the decoder expected.
        message: String,
    },
    /// A pod fails validation.
    #[error("{}: {doc}: invalid pod {name:?}: {errors}", path.display())]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// The document.
        doc: DocRef,
        /// The pod's name as written.
        name: String,
        /// Every problem found.
        errors: FieldErrors,
    },
    /// A pod of this name (`namespace/name`, with the node suffix) is already defined.
    #[error("{}: pod {pod} is also defined in {}", path.display(), first.display())]
    Duplicate {
        /// The manifest.
        path: PathBuf,
        /// The pod's full name.
        pod: String,
        /// The manifest that defines it first (file name order).
        first: PathBuf,
    },
}

/// Reads the manifest at `path` and gives its pods their identity on `node`
/// ([`static_pod::identify`]; `config.seen` is left to the caller).
pub fn load(path: &Path, node: &NodeName) -> Result<Vec<Pod>, Vec<ManifestError>> {
    let text = read_text(path).map_err(|e| vec![e])?;
    let pods = parse(&text, path)?;

    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(pods.len());
    let mut names_seen = HashSet::new();
    for (doc, pod) in pods {
        let written = pod.metadata.name.clone().unwrap_or_default();
        let pod = static_pod::identify(pod, path, node);
        let name = pod.metadata.name.clone().unwrap_or_default();
        // Upstream validates after appending the node name; only the length can fail then.
        let messages = names::dns1123_subdomain(&name);
        if !messages.is_empty() {
            let mut field_errors = FieldErrors::default();
            let field = FieldPath::new("metadata").child("name");
            for message in messages {
                field_errors
                    .0
                    .push(FieldError::invalid(&field, &name, message));
            }
            errors.push(ManifestError::Invalid {
                path: path.to_owned(),
                doc,
                name: written,
                errors: field_errors,
            });
            continue;
        }
        let full_name = full_name(&pod);
        if !names_seen.insert(full_name.clone()) {
            errors.push(ManifestError::Duplicate {
                path: path.to_owned(),
                pod: full_name,
                first: path.to_owned(),
            });
            continue;
        }
        out.push(pod);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// `namespace/name`, how pods are told apart.
pub fn full_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

fn read_text(path: &Path) -> Result<String, ManifestError> {
    let read_error = |source| ManifestError::Read {
        path: path.to_owned(),
        source,
    };
    // Non-blocking, so that a FIFO put in the file's place since it was
    // listed does not block the open; it is refused below.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(read_error)?;
    let meta = file.metadata().map_err(read_error)?;
    if !meta.is_file() {
        return Err(ManifestError::NotAFile {
            path: path.to_owned(),
        });
    }
    let size = meta.len();
    if size > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            path: path.to_owned(),
            size,
        });
    }
    let mut bytes = Vec::new();
    // The file may grow between the stat and the read.
    let read = file
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if read as u64 > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge {
            path: path.to_owned(),
            size: read as u64,
        });
    }
    String::from_utf8(bytes).map_err(|_| ManifestError::NotText {
        path: path.to_owned(),
    })
}

/// Decodes and validates the pods of a manifest's text; `path` only names
/// the file in errors. The pods are as written, without their static identity.
pub fn parse(text: &str, path: &Path) -> Result<Vec<(DocRef, Pod)>, Vec<ManifestError>> {
    let documents = documents(text, path).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut pods = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        for (doc, object) in candidates(index + 1, document, path, &mut errors) {
            match decode(doc, object, path) {
                Ok(pod) => {
                    let field_errors = validation::validate_pod(&pod);
                    if field_errors.is_empty() {
                        pods.push((doc, pod));
                    } else {
                        errors.push(ManifestError::Invalid {
                            path: path.to_owned(),
                            doc,
                            name: pod.metadata.name.clone().unwrap_or_default(),
                            errors: field_errors,
                        });
                    }
                }
                Err(error) => errors.push(error),
            }
        }
    }
    if errors.is_empty() {
        Ok(pods)
    } else {
        Err(errors)
    }
}

/// The non-empty documents of the text, as JSON values.
fn documents(text: &str, path: &Path) -> Result<Vec<Value>, ManifestError> {
    let text = text.trim_start_matches('\u{feff}');
    let documents = if text.trim_start().starts_with('{') {
        serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| ManifestError::Json {
                path: path.to_owned(),
                source,
            })?
    } else {
        // As Kubernetes' YAML (go-yaml v2, YAML 1.1): `0644` is octal
        // (file modes), `yes`/`on` are booleans. One-line errors, for logs.
        let options = serde_saphyr::options! {
            legacy_octal_numbers: true,
            with_snippet: false,
        };
        serde_saphyr::from_multiple_with_options::<Value>(text, options).map_err(|source| {
            ManifestError::Yaml {
                path: path.to_owned(),
                source: Box::new(source),
            }
        })?
    };
    Ok(documents.into_iter().filter(|d| !d.is_null()).collect())
}

/// The pod objects of one document: itself, or the items of a list.
fn candidates(
    document: usize,
    value: Value,
    path: &Path,
    errors: &mut Vec<ManifestError>,
) -> Vec<(DocRef, Map<String, Value>)> {
    let doc = DocRef {
        document,
        item: None,
    };
    let not_an_object = |doc, what: String| ManifestError::NotAnObject {
        path: path.to_owned(),
        doc,
        what,
    };
    let Value::Object(object) = value else {
        errors.push(not_an_object(
            doc,
            format!("not a mapping but {}", describe(&value)),
        ));
        return Vec::new();
    };
    let api_version = text_field(&object, "apiVersion");
    let kind = text_field(&object, "kind");
    if api_version.as_deref() == Some("v1") && matches!(kind.as_deref(), Some("List" | "PodList")) {
        let items = match object.get("items") {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                errors.push(not_an_object(
                    doc,
                    format!("items is not a list but {}", describe(other)),
                ));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let doc = DocRef {
                document,
                item: Some(i),
            };
            match item {
                Value::Object(item) => match check_kind(item, true) {
                    Ok(()) => out.push((doc, item.clone())),
                    Err((api_version, kind)) => errors.push(ManifestError::NotAPod {
                        path: path.to_owned(),
                        doc,
                        api_version,
                        kind,
                    }),
                },
                other => errors.push(not_an_object(
                    doc,
                    format!("not a mapping but {}", describe(other)),
                )),
            }
        }
        return out;
    }
    match check_kind(&object, false) {
        Ok(()) => vec![(doc, object)],
        Err((api_version, kind)) => {
            errors.push(ManifestError::NotAPod {
                path: path.to_owned(),
                doc,
                api_version,
                kind,
            });
            Vec::new()
        }
    }
}

/// A field's value as text, whatever its type (so that errors can show it).
fn text_field(object: &Map<String, Value>, key: &str) -> Option<String> {
    object.get(key).map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Only `v1` `Pod`; a list's items may leave both out.
fn check_kind(object: &Map<String, Value>, in_list: bool) -> Result<(), (String, String)> {
    let api_version = text_field(object, "apiVersion");
    let kind = text_field(object, "kind");
    let api_ok = api_version.as_deref().map_or(in_list, |a| a == "v1");
    let kind_ok = kind.as_deref().map_or(in_list, |k| k == "Pod");
    if api_ok && kind_ok {
        Ok(())
    } else {
        Err((api_version.unwrap_or_default(), kind.unwrap_or_default()))
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(_) => "a boolean".to_owned(),
        Value::Number(_) => "a number".to_owned(),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a mapping".to_owned(),
    }
}

fn decode(doc: DocRef, object: Map<String, Value>, path: &Path) -> Result<Pod, ManifestError> {
    serde_path_to_error::deserialize(Value::Object(object)).map_err(|error| {
        let field = error.path().to_string();
        ManifestError::Decode {
            path: path.to_owned(),
            doc,
            // serde_path_to_error writes the root as ".".
            field: if field == "." {
                "(root)".to_owned()
            } else {
                field
            },
            message: error.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests;
