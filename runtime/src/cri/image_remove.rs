//! RemoveImage: removing an absent image succeeds, as the CRI asks (the
//! kubelet's image GC retries removals); one in use is refused.

use berth_proto::v1;
use tonic::{Response, Status};

use super::{ImageServer, error, requested_image};
use crate::image::meta::MetaError;
use crate::image::store::ImageError;

const RPC: &str = "RemoveImage";

pub(super) async fn remove_image(
    server: &ImageServer,
    req: v1::RemoveImageRequest,
) -> Result<Response<v1::RemoveImageResponse>, Status> {
    let image = requested_image(RPC, req.image.as_ref())?;
    server
        .blocking(RPC, move |store| match store.remove(&image) {
            Ok(r) => {
                tracing::info!(%image, id = %r.id, "removed");
                Ok(Response::new(v1::RemoveImageResponse {}))
            }
            Err(ImageError::Meta(MetaError::NotFound(_))) => {
                tracing::debug!(%image, "RemoveImage: already absent");
                Ok(Response::new(v1::RemoveImageResponse {}))
            }
            Err(e) => Err(error::image_status(RPC, &e)),
        })
        .await
}
