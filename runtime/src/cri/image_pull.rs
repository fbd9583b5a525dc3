//! PullImage: pulls with the request's credentials (else the configured
//! ones) and answers with the image ID, as containerd does.

use std::sync::Arc;

use berth_proto::v1;
use tonic::{Response, Status};

use super::{ImageServer, error, requested_image};
use crate::image::pull::{PullOptions, Silent};
use crate::image::reference::Reference;
use crate::image::registry::Credentials;

const RPC: &str = "PullImage";

/// The credentials of a CRI AuthConfig; None when it carries none.
fn credentials(auth: Option<&v1::AuthConfig>) -> Result<Option<Credentials>, Status> {
    let Some(a) = auth else {
        return Ok(None);
    };
    Credentials::from_auth_config(
        &a.username,
        &a.password,
        &a.auth,
        &a.identity_token,
        &a.registry_token,
    )
    .map_err(|e| error::registry_status(RPC, &e))
}

pub(super) async fn pull_image(
    server: &ImageServer,
    req: v1::PullImageRequest,
) -> Result<Response<v1::PullImageResponse>, Status> {
    let image = requested_image(RPC, req.image.as_ref())?;
    // A bad reference is the caller's mistake: say so before any network work.
    if let Err(e) = image.parse::<Reference>() {
        return Err(error::pull_status(RPC, &e.into()));
    }
    let opts = PullOptions {
        credentials: credentials(req.auth.as_ref())?,
        platform: None,
    };
    tracing::info!(%image, authenticated = opts.credentials.is_some(), "pulling");
    let record = server
        .store
        .pull(&image, &opts, Arc::new(Silent))
        .await
        .map_err(|e| {
            tracing::warn!(%image, error = %e, "pull failed");
            error::pull_status(RPC, &e)
        })?;
    tracing::info!(%image, id = %record.id, "pulled");
    Ok(Response::new(v1::PullImageResponse {
        image_ref: record.id.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_config_becomes_credentials() {
        assert!(credentials(None).unwrap().is_none());
        assert!(
            credentials(Some(&v1::AuthConfig::default()))
                .unwrap()
                .is_none()
        );
        let basic = v1::AuthConfig {
            username: "alice".into(),
            password: "secret".into(),
            ..Default::default()
        };
        match credentials(Some(&basic)).unwrap() {
            Some(Credentials::Basic { username, password }) => {
                assert_eq!((username.as_str(), password.as_str()), ("alice", "secret"));
            }
            other => panic!("expected basic credentials, got {other:?}"),
        }
        let bad = v1::AuthConfig {
            auth: "%%%".into(),
            ..Default::default()
        };
        let e = credentials(Some(&bad)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(!e.message().contains("%%%"), "{}", e.message());
    }
}
