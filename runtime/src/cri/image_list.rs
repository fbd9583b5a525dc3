//! ListImages and StreamImages, and the CRI view of an image record.

use berth_proto::v1;
use tonic::codegen::BoxStream;
use tonic::{Response, Status};

use super::{ImageServer, error};
use crate::image::meta::ImageRecord;

/// Images per StreamImages message: far below the 16 MiB message limit even
/// for images with many tags.
pub(super) const STREAM_BATCH: usize = 100;

/// The image user as the CRI reports it: a numeric user (`1000`,
/// `1000:1000`) is a uid, anything else a username (the group is dropped).
pub(super) fn image_user(user: Option<&str>) -> (Option<v1::Int64Value>, String) {
    let user = user.unwrap_or("");
    let name = user.split_once(':').map_or(user, |(u, _)| u);
    if name.is_empty() {
        return (None, String::new());
    }
    match name.parse::<i64>() {
        Ok(uid) => (Some(v1::Int64Value { value: uid }), String::new()),
        Err(_) => (None, name.to_string()),
    }
}

/// An image record as a CRI `Image`.
pub(super) fn cri_image(r: &ImageRecord) -> v1::Image {
    let (uid, username) = image_user(r.run.user.as_deref());
    let id = r.id.to_string();
    v1::Image {
        spec: Some(v1::ImageSpec {
            image: id.clone(),
            ..Default::default()
        }),
        id,
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size,
        uid,
        username,
        pinned: false,
    }
}

/// The images a filter selects: all without one, else the one it names.
async fn select(
    server: &ImageServer,
    rpc: &'static str,
    filter: Option<v1::ImageFilter>,
) -> Result<Vec<v1::Image>, Status> {
    let wanted = filter
        .and_then(|f| f.image)
        .map(|s| s.image.trim().to_string())
        .filter(|s| !s.is_empty());
    server
        .blocking(rpc, move |store| {
            let records = match &wanted {
                None => store.list(),
                Some(r) => store.status(r).map(|found| found.into_iter().collect()),
            }
            .map_err(|e| error::image_status(rpc, &e))?;
            Ok(records.iter().map(cri_image).collect())
        })
        .await
}

pub(super) async fn list_images(
    server: &ImageServer,
    req: v1::ListImagesRequest,
) -> Result<Response<v1::ListImagesResponse>, Status> {
    let images = select(server, "ListImages", req.filter).await?;
    tracing::debug!(count = images.len(), "ListImages");
    Ok(Response::new(v1::ListImagesResponse { images }))
}

pub(super) async fn stream_images(
    server: &ImageServer,
    req: v1::StreamImagesRequest,
) -> Result<Response<BoxStream<v1::StreamImagesResponse>>, Status> {
    let images = select(server, "StreamImages", req.filter).await?;
    let batches: Vec<Result<v1::StreamImagesResponse, Status>> = images
        .chunks(STREAM_BATCH)
        .map(|c| Ok(v1::StreamImagesResponse { images: c.to_vec() }))
        .collect();
    Ok(Response::new(Box::pin(tonic::codegen::tokio_stream::iter(
        batches,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_users_are_uids_and_names_are_usernames() {
        assert_eq!(image_user(None), (None, String::new()));
        assert_eq!(image_user(Some("")), (None, String::new()));
        assert_eq!(
            image_user(Some("1000:1000")),
            (Some(v1::Int64Value { value: 1000 }), String::new())
        );
        assert_eq!(
            image_user(Some("0")),
            (Some(v1::Int64Value { value: 0 }), String::new())
        );
        assert_eq!(image_user(Some("nginx:web")), (None, "nginx".to_string()));
        assert_eq!(image_user(Some("www-data")), (None, "www-data".to_string()));
    }
}
