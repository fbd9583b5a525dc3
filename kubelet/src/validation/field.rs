//! Field errors as the API server words them: `spec.containers[0].image: Required value`.
//!
//! The rendering follows apimachinery's `field.Error` so that a message from
//! berth reads like the one `kubectl apply` would print for the same pod;
//! people search for those words.

use std::fmt;

/// Where a field sits in the object, in the API's JSON names: `spec.containers[0].ports[1].hostPort`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FieldPath(String);

impl FieldPath {
    /// A top-level field (`metadata`, `spec`).
    pub fn new(root: &str) -> Self {
        Self(root.to_owned())
    }

    /// A field of this object: `spec` → `spec.containers`.
    pub fn child(&self, name: &str) -> Self {
        Self(format!("{}.{name}", self.0))
    }

    /// An element of this list: `spec.containers` → `spec.containers[0]`.
    pub fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What is wrong with a field; the words are upstream's `field.ErrorType` strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A reference to something that does not exist (a volume mount naming no volume).
    NotFound,
    /// A field that must be set is empty.
    Required,
    /// A value that must be unique is repeated.
    Duplicate,
    /// A value that is malformed or out of range.
    Invalid,
    /// A value outside a fixed set.
    NotSupported,
    /// A field that may not be set here, or not to this value.
    Forbidden,
    /// A value longer than allowed.
    TooLong,
}

impl ErrorKind {
    fn words(self) -> &'static str {
        match self {
            Self::NotFound => "Not found",
            Self::Required => "Required value",
            Self::Duplicate => "Duplicate value",
            Self::Invalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
        }
    }

    /// Upstream never prints the value of these kinds: it is empty, or beside the point.
    fn shows_value(self) -> bool {
        !matches!(self, Self::Required | Self::Forbidden | Self::TooLong)
    }
}

/// The offending value, kept typed so that it prints as upstream does (strings quoted, numbers bare).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadValue {
    /// Nothing to show.
    None,
    /// A string value.
    Str(String),
    /// A number.
    Int(i64),
}

impl From<&str> for BadValue {
    fn from(value: &str) -> Self {
        Self::Str(value.to_owned())
    }
}

impl From<&String> for BadValue {
    fn from(value: &String) -> Self {
        Self::Str(value.clone())
    }
}

impl From<i32> for BadValue {
    fn from(value: i32) -> Self {
        Self::Int(value.into())
    }
}

impl From<i64> for BadValue {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

/// One problem with one field of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field.
    pub field: FieldPath,
    /// The kind of problem.
    pub kind: ErrorKind,
    /// The value found there.
    pub value: BadValue,
    /// What the value should be; may be empty.
    pub detail: String,
}

impl FieldError {
    fn new(field: &FieldPath, kind: ErrorKind, value: BadValue, detail: impl Into<String>) -> Self {
        Self {
            field: field.clone(),
            kind,
            value,
            detail: detail.into(),
        }
    }

    /// The field is empty but must be set.
    pub fn required(field: &FieldPath, detail: impl Into<String>) -> Self {
        Self::new(field, ErrorKind::Required, BadValue::None, detail)
    }

    /// The value is malformed; `detail` says what it should look like.
    pub fn invalid(
        field: &FieldPath,
        value: impl Into<BadValue>,
        detail: impl Into<String>,
    ) -> Self {
        Self::new(field, ErrorKind::Invalid, value.into(), detail)
    }

    /// The value repeats one that must be unique.
    pub fn duplicate(field: &FieldPath, value: impl Into<BadValue>) -> Self {
        Self::new(field, ErrorKind::Duplicate, value.into(), "")
    }

    /// The value names something that does not exist.
    pub fn not_found(field: &FieldPath, value: impl Into<BadValue>) -> Self {
        Self::new(field, ErrorKind::NotFound, value.into(), "")
    }

    /// The value is not one of `supported`.
    pub fn not_supported(
        field: &FieldPath,
        value: impl Into<BadValue>,
        supported: &[&str],
    ) -> Self {
        let quoted: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        let detail = format!("supported values: {}", quoted.join(", "));
        Self::new(field, ErrorKind::NotSupported, value.into(), detail)
    }

    /// The field may not be set (to this value) here.
    pub fn forbidden(field: &FieldPath, detail: impl Into<String>) -> Self {
        Self::new(field, ErrorKind::Forbidden, BadValue::None, detail)
    }

    /// The value is longer than `max` bytes.
    pub fn too_long(field: &FieldPath, max: usize) -> Self {
        let detail = format!("may not be more than {max} bytes");
        Self::new(field, ErrorKind::TooLong, BadValue::None, detail)
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.kind.words())?;
        if self.kind.shows_value() {
            match &self.value {
                BadValue::None => {}
                // Rust's `{:?}` quotes and escapes as Go's `%q` does for the
                // printable text that manifests hold.
                BadValue::Str(s) => write!(f, ": {s:?}")?,
                BadValue::Int(n) => write!(f, ": {n}")?,
            }
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldError {}

/// All the problems found in one pod, in the order upstream reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    /// No problem found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems.
    pub fn iter(&self) -> std::slice::Iter<'_, FieldError> {
        self.0.iter()
    }

    pub(crate) fn push(&mut self, error: FieldError) {
        self.0.push(error);
    }

    /// One `Invalid` error per message of a name check (`names::dns1123_label` ...).
    pub(crate) fn invalid_each(&mut self, field: &FieldPath, value: &str, messages: Vec<String>) {
        for message in messages {
            self.push(FieldError::invalid(field, value, message));
        }
    }
}

impl<'a> IntoIterator for &'a FieldErrors {
    type Item = &'a FieldError;
    type IntoIter = std::slice::Iter<'a, FieldError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// As apimachinery's aggregate: one error bare, several in brackets.
impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            all => {
                f.write_str("[")?;
                for (i, error) in all.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{error}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl std::error::Error for FieldErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_as_upstream() {
        let image = FieldPath::new("spec")
            .child("containers")
            .index(0)
            .child("image");
        assert_eq!(
            FieldError::required(&image, "").to_string(),
            "spec.containers[0].image: Required value"
        );
        let port = FieldPath::new("spec")
            .child("containers")
            .index(1)
            .child("ports")
            .index(0);
        assert_eq!(
            FieldError::invalid(
                &port.child("containerPort"),
                70000,
                "must be between 1 and 65535, inclusive"
            )
            .to_string(),
            "spec.containers[1].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
        assert_eq!(
            FieldError::not_supported(&port.child("protocol"), "ICMP", &["SCTP", "TCP", "UDP"])
                .to_string(),
            "spec.containers[1].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\""
        );
        assert_eq!(
            FieldError::duplicate(
                &FieldPath::new("spec")
                    .child("volumes")
                    .index(1)
                    .child("name"),
                "data"
            )
            .to_string(),
            "spec.volumes[1].name: Duplicate value: \"data\""
        );
        assert_eq!(
            FieldError::too_long(&FieldPath::new("metadata").child("annotations"), 262144)
                .to_string(),
            "metadata.annotations: Too long: may not be more than 262144 bytes"
        );
    }

    #[test]
    fn aggregate_brackets_several() {
        let a = FieldError::required(&FieldPath::new("spec").child("containers"), "");
        let b = FieldError::forbidden(
            &FieldPath::new("spec").child("ephemeralContainers"),
            "cannot be set on create",
        );
        assert_eq!(
            FieldErrors(vec![a.clone()]).to_string(),
            "spec.containers: Required value"
        );
        assert_eq!(
            FieldErrors(vec![a, b]).to_string(),
            "[spec.containers: Required value, spec.ephemeralContainers: Forbidden: cannot be set on create]"
        );
    }
}
