//! ImageFsInfo: what the image store takes on its filesystem, for the
//! kubelet's image garbage collection.

use std::time::{SystemTime, UNIX_EPOCH};

use berth_proto::v1;
use tonic::{Response, Status};

use super::{ImageServer, error};

const RPC: &str = "ImageFsInfo";

pub(super) async fn image_fs_info(
    server: &ImageServer,
    _req: v1::ImageFsInfoRequest,
) -> Result<Response<v1::ImageFsInfoResponse>, Status> {
    server
        .blocking(RPC, |store| {
            let usage = store.usage().map_err(|e| error::image_status(RPC, &e))?;
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            // The store's root, like containerd's snapshotter root: the kubelet
            // (cAdvisor) finds the filesystem holding it.
            let fs = v1::FilesystemUsage {
                timestamp,
                fs_id: Some(v1::FilesystemIdentifier {
                    mountpoint: store.root().to_string_lossy().into_owned(),
                }),
                used_bytes: Some(v1::UInt64Value { value: usage.bytes }),
                inodes_used: Some(v1::UInt64Value {
                    value: usage.inodes,
                }),
            };
            Ok(Response::new(v1::ImageFsInfoResponse {
                image_filesystems: vec![fs],
                container_filesystems: Vec::new(),
            }))
        })
        .await
}
