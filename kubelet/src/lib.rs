//! The node agent: static pods first, then the API-server mode. It talks to runtimes over CRI gRPC only.
//!
//! Empty until the kubelet issue: nothing here is used yet.
