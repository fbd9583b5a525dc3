//! ImageStatus: an image's record, and with `verbose` its config.

use std::collections::HashMap;

use berth_proto::v1;
use tonic::{Response, Status};

use super::image_list::cri_image;
use super::{ImageServer, error, requested_image};

const RPC: &str = "ImageStatus";

pub(super) async fn image_status(
    server: &ImageServer,
    req: v1::ImageStatusRequest,
) -> Result<Response<v1::ImageStatusResponse>, Status> {
    let image = requested_image(RPC, req.image.as_ref())?;
    let verbose = req.verbose;
    server
        .blocking(RPC, move |store| {
            let found = store
                .status(&image)
                .map_err(|e| error::image_status(RPC, &e))?;
            // The CRI asks for an empty answer, not an error, when the image
            // is absent: that is how the kubelet learns it must pull.
            let Some(record) = found else {
                tracing::debug!(%image, "ImageStatus: not found");
                return Ok(Response::new(v1::ImageStatusResponse::default()));
            };
            let mut info = HashMap::new();
            if verbose {
                let config = store
                    .config(&record)
                    .map_err(|e| error::image_status(RPC, &e))?;
                let json = serde_json::to_string(&config).map_err(|e| {
                    Status::internal(format!("{RPC}: encoding the config of {image}: {e}"))
                })?;
                info.insert("info".to_string(), json);
            }
            Ok(Response::new(v1::ImageStatusResponse {
                image: Some(cri_image(&record)),
                info,
            }))
        })
        .await
}
