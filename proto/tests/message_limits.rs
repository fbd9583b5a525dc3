//! The client and server constructors must carry the kubelet's 16 MiB limits
//! in both directions: tonic's defaults (4 MiB decoding) would make a busy
//! node's list answers fail with ResourceExhausted.

use berth_proto::v1::image_service_client::ImageServiceClient;
use berth_proto::v1::image_service_server::ImageService;
use berth_proto::v1::{
    AuthConfig, Image, ImageFilter, ImageFsInfoRequest, ImageFsInfoResponse, ImageSpec,
    ImageStatusRequest, ImageStatusResponse, ListImagesRequest, ListImagesResponse,
    PullImageRequest, PullImageResponse, RemoveImageRequest, RemoveImageResponse,
    StreamImagesRequest, StreamImagesResponse,
};
use berth_proto::{MAX_MESSAGE_SIZE, image_service_client, image_service_server};
use tonic::codegen::tokio_stream;
use tonic::transport::{Channel, Endpoint, Server, server::TcpIncoming};
use tonic::{Code, Request, Response, Status};

const MIB: usize = 1024 * 1024;

/// Answers ListImages with about as many bytes as the filter's image name
/// asks for, and PullImage with the size of the request it got.
struct SizedImages;

#[tonic::async_trait]
impl ImageService for SizedImages {
    async fn list_images(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let want: usize = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .unwrap_or_default()
            .parse()
            .map_err(|_| Status::invalid_argument("filter image is not a size"))?;
        let image = Image {
            id: "sha256:".to_string() + &"a".repeat(64),
            repo_tags: vec!["t".repeat(MIB)],
            ..Default::default()
        };
        Ok(Response::new(ListImagesResponse {
            images: vec![image; want / MIB],
        }))
    }

    type StreamImagesStream = tokio_stream::Empty<Result<StreamImagesResponse, Status>>;

    async fn stream_images(
        &self,
        _: Request<StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        Ok(Response::new(tokio_stream::empty()))
    }

    async fn image_status(
        &self,
        _: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        Ok(Response::new(ImageStatusResponse::default()))
    }

    async fn pull_image(
        &self,
        req: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let auth = req.into_inner().auth.unwrap_or_default();
        Ok(Response::new(PullImageResponse {
            image_ref: auth.auth.len().to_string(),
        }))
    }

    async fn remove_image(
        &self,
        _: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        Ok(Response::new(RemoveImageResponse::default()))
    }

    async fn image_fs_info(
        &self,
        _: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        Ok(Response::new(ImageFsInfoResponse::default()))
    }
}

async fn serve() -> Channel {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(image_service_server(SizedImages))
            .serve_with_incoming(incoming),
    );
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn list_of(bytes: usize) -> ListImagesRequest {
    ListImagesRequest {
        filter: Some(ImageFilter {
            image: Some(ImageSpec {
                image: bytes.to_string(),
                ..Default::default()
            }),
        }),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn answers_and_requests_up_to_16_mib_pass() {
    let mut client = image_service_client(serve().await);

    let images = client
        .list_images(list_of(12 * MIB))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(images.len(), 12);

    let pull = PullImageRequest {
        image: Some(ImageSpec {
            image: "busybox".into(),
            ..Default::default()
        }),
        auth: Some(AuthConfig {
            auth: "x".repeat(12 * MIB),
            ..Default::default()
        }),
        sandbox_config: None,
    };
    let got = client
        .pull_image(pull)
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    assert_eq!(got, (12 * MIB).to_string());
}

#[tokio::test(flavor = "current_thread")]
async fn answers_over_16_mib_are_refused() {
    let mut client = image_service_client(serve().await);
    let err = client
        .list_images(list_of(MAX_MESSAGE_SIZE + MIB))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
}

/// Guards the tests above: without the helpers, tonic's 4 MiB default
/// refuses the same 12 MiB answer.
#[tokio::test(flavor = "current_thread")]
async fn plain_client_keeps_tonics_smaller_default() {
    let mut client = ImageServiceClient::new(serve().await);
    let err = client.list_images(list_of(12 * MIB)).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
}
