//! Container IDs: the one name that becomes a directory under the state root.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdError {
    #[error("container ID is empty")]
    Empty,
    #[error("container ID {0:?} is longer than 1024 bytes")]
    TooLong(String),
    #[error("container ID {0:?} is \".\" or \"..\"")]
    Dots(String),
    #[error("container ID {id:?} contains {what}; IDs may hold letters, digits and \"_+-.\"")]
    BadChar { id: String, what: String },
}

/// Checks an ID before it is used as a path component.
///
/// We accept what runc accepts (`^[\w+-\.]+$`) because callers such as containerd
/// generate IDs from that alphabet; anything else could escape the state root.
pub fn validate(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > 1024 {
        return Err(IdError::TooLong(id.chars().take(64).collect()));
    }
    if id == "." || id == ".." {
        return Err(IdError::Dots(id.to_owned()));
    }
    for c in id.chars() {
        let ok = c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.');
        if !ok {
            let what = match c {
                '/' => "\"/\"".to_owned(),
                '\0' => "a NUL byte".to_owned(),
                c if c.is_control() => format!("control character U+{:04X}", c as u32),
                c => format!("{c:?}"),
            };
            return Err(IdError::BadChar {
                id: id.escape_debug().to_string(),
                what,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("abc")]
    #[case("k8s_POD_web-1.2+x")]
    #[case("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")]
    fn accepts(#[case] id: &str) {
        assert_eq!(validate(id), Ok(()));
    }

    #[rstest]
    #[case("", "empty")]
    #[case(".", "\".\"")]
    #[case("..", "\"..\"")]
    #[case("a/b", "\"/\"")]
    #[case("../etc", "\"/\"")]
    #[case("a\0b", "NUL")]
    #[case("a\nb", "U+000A")]
    #[case("a b", "' '")]
    fn refuses(#[case] id: &str, #[case] message_part: &str) {
        let err = validate(id).unwrap_err().to_string();
        assert!(err.contains(message_part), "{err}");
    }
}
