//! The result of an exec or attach, as the error stream carries it.
//!
//! From v4.channel.k8s.io on it is a JSON `metav1.Status`; client-go decodes
//! `Success`, or `Failure` with reason `NonZeroExitCode` and an `ExitCode`
//! cause whose message is the code, into its exit-code error. Older
//! protocols carry only a failure's message as text, and nothing on success.

use serde::Serialize;

/// The outcome the server reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    /// The command ran and exited with a non-zero code.
    ExitCode(i32),
    /// The runtime failed (an "Internal error" status, code 500).
    Internal(String),
}

/// How the error stream encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatusFormat {
    /// channel.k8s.io, v2, v3: failure message as text.
    Text,
    /// v4, v5: metav1.Status JSON.
    Json,
}

// Field order and omissions as Go's encoding/json writes metav1.Status:
// `metadata` is a struct and always present, the rest are omitempty.
#[derive(Serialize)]
struct Status<'a> {
    metadata: Empty,
    status: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<Details<'a>>,
    #[serde(skip_serializing_if = "is_zero")]
    code: i32,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct Details<'a> {
    causes: Vec<Cause<'a>>,
}

#[derive(Serialize)]
struct Cause<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    message: String,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

impl Outcome {
    fn message(&self) -> String {
        match self {
            Outcome::Success => String::new(),
            Outcome::ExitCode(code) => {
                format!("command terminated with non-zero exit code: exit status {code}")
            }
            Outcome::Internal(msg) => format!("Internal error occurred: {msg}"),
        }
    }

    /// The bytes to write on the error stream; empty means write nothing.
    pub fn encode(&self, format: StatusFormat) -> Vec<u8> {
        let message = self.message();
        match format {
            StatusFormat::Text => message.into_bytes(),
            StatusFormat::Json => {
                let status = match self {
                    Outcome::Success => Status {
                        metadata: Empty {},
                        status: "Success",
                        message: "",
                        reason: "",
                        details: None,
                        code: 0,
                    },
                    Outcome::ExitCode(code) => Status {
                        metadata: Empty {},
                        status: "Failure",
                        message: &message,
                        reason: "NonZeroExitCode",
                        details: Some(Details {
                            causes: vec![Cause {
                                reason: "ExitCode",
                                message: code.to_string(),
                            }],
                        }),
                        code: 0,
                    },
                    Outcome::Internal(msg) => Status {
                        metadata: Empty {},
                        status: "Failure",
                        message: &message,
                        reason: "InternalError",
                        details: Some(Details {
                            causes: vec![Cause {
                                reason: "",
                                message: msg.clone(),
                            }],
                        }),
                        code: 500,
                    },
                };
                // Serializing these plain structs cannot fail.
                serde_json::to_vec(&status).unwrap_or_default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_is_what_upstream_writes() {
        assert_eq!(
            String::from_utf8(Outcome::Success.encode(StatusFormat::Json)).unwrap(),
            r#"{"metadata":{},"status":"Success"}"#
        );
        assert!(Outcome::Success.encode(StatusFormat::Text).is_empty());
    }

    #[test]
    fn exit_code_is_a_non_zero_exit_code_failure() {
        let v: serde_json::Value =
            serde_json::from_slice(&Outcome::ExitCode(3).encode(StatusFormat::Json)).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        assert!(v.get("code").is_none());
    }

    #[test]
    fn internal_errors_carry_code_500_and_the_message() {
        let v: serde_json::Value = serde_json::from_slice(
            &Outcome::Internal("container c1 not found".into()).encode(StatusFormat::Json),
        )
        .unwrap();
        assert_eq!(v["code"], 500);
        assert_eq!(v["reason"], "InternalError");
        assert_eq!(
            v["message"],
            "Internal error occurred: container c1 not found"
        );
        assert_eq!(
            Outcome::Internal("boom".into()).encode(StatusFormat::Text),
            b"Internal error occurred: boom"
        );
    }
}
