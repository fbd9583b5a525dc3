//! gRPC status codes for image store, pull and registry errors, so the
//! kubelet can tell a bad reference (InvalidArgument) from missing
//! credentials (Unauthenticated) or an unreachable registry (Unavailable).
//! The message is the error's own text, which names the image, URL or digest.

use tonic::{Code, Status};

use crate::image::meta::MetaError;
use crate::image::pull::PullError;
use crate::image::registry::RegistryError;
use crate::image::store::ImageError;

/// The code of a registry error.
fn registry_code(e: &RegistryError) -> Code {
    match e {
        RegistryError::Setup(_) | RegistryError::Endpoint { .. } => Code::FailedPrecondition,
        RegistryError::Credentials(_) => Code::InvalidArgument,
        RegistryError::Connection { .. } => Code::Unavailable,
        RegistryError::Status { status, .. } => match status {
            429 => Code::ResourceExhausted,
            500..=599 => Code::Unavailable,
            _ => Code::Unknown,
        },
        RegistryError::NotFound { .. } | RegistryError::NoMatchingPlatform { .. } => Code::NotFound,
        RegistryError::Unauthorized { status: 403, .. } => Code::PermissionDenied,
        RegistryError::Unauthorized { .. } | RegistryError::Auth { .. } => Code::Unauthenticated,
        RegistryError::UnsupportedMediaType { .. } => Code::FailedPrecondition,
        RegistryError::ManifestTooLarge { .. } | RegistryError::BlobTooLarge { .. } => {
            Code::ResourceExhausted
        }
        // The registry sent content that is not what it promised.
        RegistryError::Redirects { .. }
        | RegistryError::Redirect { .. }
        | RegistryError::ManifestDigest { .. }
        | RegistryError::ManifestInvalid { .. }
        | RegistryError::BlobSize { .. }
        | RegistryError::BlobDigest { .. }
        | RegistryError::ContentRange { .. }
        | RegistryError::Offset { .. } => Code::Unknown,
        // The most telling failure wins: an auth or not-found answer from one
        // endpoint says more than another endpoint being down.
        RegistryError::AllEndpoints { errors, .. } => errors
            .iter()
            .map(registry_code)
            .min_by_key(|c| match c {
                Code::Unauthenticated | Code::PermissionDenied => 0,
                Code::NotFound => 1,
                Code::Unavailable => 3,
                _ => 2,
            })
            .unwrap_or(Code::Unavailable),
    }
}

fn meta_code(e: &MetaError) -> Code {
    match e {
        MetaError::NotFound(_) => Code::NotFound,
        MetaError::Ambiguous { .. } | MetaError::BadUser(_) => Code::InvalidArgument,
        MetaError::Io { .. } | MetaError::Corrupt { .. } => Code::Internal,
    }
}

fn pull_code(e: &PullError) -> Code {
    match e {
        PullError::Reference(_) => Code::InvalidArgument,
        PullError::Registry(r) => registry_code(r),
        PullError::Meta(m) => meta_code(m),
        PullError::Content(_)
        | PullError::Layer(_)
        | PullError::Lease(_)
        | PullError::Worker(_) => Code::Internal,
        // The image as published is unusable.
        PullError::Digest { .. }
        | PullError::Config { .. }
        | PullError::LayerCount { .. }
        | PullError::Pipeline { .. } => Code::Unknown,
    }
}

fn image_code(e: &ImageError) -> Code {
    match e {
        ImageError::Meta(m) => meta_code(m),
        ImageError::Registry(r) => registry_code(r),
        ImageError::Pull(p) => pull_code(p),
        ImageError::InUse { .. } | ImageError::MissingLayer { .. } => Code::FailedPrecondition,
        ImageError::Content(_)
        | ImageError::Layer(_)
        | ImageError::Snapshot(_)
        | ImageError::Config { .. }
        | ImageError::Io { .. } => Code::Internal,
    }
}

/// The gRPC status of a registry error, its message prefixed by `rpc`.
pub fn registry_status(rpc: &str, e: &RegistryError) -> Status {
    Status::new(registry_code(e), format!("{rpc}: {e}"))
}

/// The gRPC status of a pull error, its message prefixed by `rpc`.
pub fn pull_status(rpc: &str, e: &PullError) -> Status {
    Status::new(pull_code(e), format!("{rpc}: {e}"))
}

/// The gRPC status of an image store error, its message prefixed by `rpc`.
pub fn image_status(rpc: &str, e: &ImageError) -> Status {
    Status::new(image_code(e), format!("{rpc}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unauthorized(status: u16) -> RegistryError {
        RegistryError::Unauthorized {
            url: "http://r/v2/x/manifests/latest".into(),
            reference: "r/x:latest".into(),
            status,
            detail: "no".into(),
        }
    }

    #[test]
    fn registry_answers_map_to_grpc_codes() {
        assert_eq!(registry_code(&unauthorized(401)), Code::Unauthenticated);
        assert_eq!(registry_code(&unauthorized(403)), Code::PermissionDenied);
        let down = RegistryError::Connection {
            url: "http://r".into(),
            reference: "r/x".into(),
            cause: "refused".into(),
        };
        assert_eq!(registry_code(&down), Code::Unavailable);
        let all = RegistryError::AllEndpoints {
            reference: "r/x".into(),
            errors: vec![down, unauthorized(401)],
        };
        assert_eq!(registry_code(&all), Code::Unauthenticated);
    }

    #[test]
    fn store_errors_map_to_grpc_codes() {
        let missing = ImageError::Meta(MetaError::NotFound("busybox".into()));
        let s = image_status("RemoveImage", &missing);
        assert_eq!(s.code(), Code::NotFound);
        assert!(s.message().starts_with("RemoveImage: "), "{}", s.message());
        assert!(s.message().contains("busybox"), "{}", s.message());
        let bad: PullError = "Not A Reference!"
            .parse::<crate::image::reference::Reference>()
            .unwrap_err()
            .into();
        assert_eq!(pull_status("PullImage", &bad).code(), Code::InvalidArgument);
    }
}
