//! The CRI v1 API (`runtime.v1`), compiled with tonic and prost.
//!
//! The messages and services are generated at build time from
//! `proto/runtime/v1/api.proto`, which matches the upstream Kubernetes CRI
//! field for field. Both sides live here: the `berth runtime` daemon uses the
//! servers, berth's kubelet and the integration tests use the clients. The
//! constructors below apply the kubelet's message size limits, so that every
//! berth endpoint accepts what the upstream kubelet may send or expect.

/// Generated code for the `runtime.v1` protobuf package.
pub mod runtime {
    /// CRI v1: messages, `runtime_service_{client,server}` and
    /// `image_service_{client,server}`.
    pub mod v1 {
        #![allow(
            clippy::all,
            clippy::pedantic,
            clippy::nursery,
            missing_docs,
            rustdoc::bare_urls,
            rustdoc::invalid_html_tags
        )]
        tonic::include_proto!("runtime.v1");
    }
}

pub use runtime::v1;

use tonic::codegen::{Body, Bytes, StdError};
use v1::image_service_client::ImageServiceClient;
use v1::image_service_server::{ImageService, ImageServiceServer};
use v1::runtime_service_client::RuntimeServiceClient;
use v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};

/// The encoded `FileDescriptorSet` the code was generated from.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cri_descriptor.bin"));

/// Largest gRPC message the kubelet sends or accepts on the CRI socket
/// (16 MiB). tonic's default of 4 MiB is too small for ListContainers or
/// ListPodSandboxStats answers on a node with many pods.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// A RuntimeService client over `inner` (e.g. a tonic `Channel` on the unix
/// socket) that sends and accepts messages up to [`MAX_MESSAGE_SIZE`].
pub fn runtime_service_client<T>(inner: T) -> RuntimeServiceClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    RuntimeServiceClient::new(inner)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// An ImageService client over `inner` that sends and accepts messages up
/// to [`MAX_MESSAGE_SIZE`].
pub fn image_service_client<T>(inner: T) -> ImageServiceClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    ImageServiceClient::new(inner)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// The RuntimeService server for `service`, sending and accepting messages
/// up to [`MAX_MESSAGE_SIZE`].
pub fn runtime_service_server<S: RuntimeService>(service: S) -> RuntimeServiceServer<S> {
    RuntimeServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// The ImageService server for `service`, sending and accepting messages up
/// to [`MAX_MESSAGE_SIZE`].
pub fn image_service_server<S: ImageService>(service: S) -> ImageServiceServer<S> {
    ImageServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}
