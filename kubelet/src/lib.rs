//! The node agent: static pods first, then the API-server mode. It talks to runtimes over CRI gRPC only.
//!
//! What exists so far is the static pod manifest source, the pod's CRI config, its volumes and the
//! CRI client:
//! - [`manifest`]: a manifest file (YAML or JSON, one or more documents) → validated `v1` pods;
//! - [`validation`]: the checks, with upstream's field paths and messages;
//! - [`static_pod`]: a manifest pod's name, UID and annotations on this node, as upstream's file source;
//! - [`source`]: a manifest directory watched with inotify, published as the full set of pods by file;
//! - [`cri_config`]: a pod → the CRI `PodSandboxConfig` and `ContainerConfig`s to run it (QoS class,
//!   cgroup parent, DNS, environment, resources, security), pure, as upstream's `kuberuntime`;
//! - [`volume`]: a pod's volumes on the node (emptyDir, hostPath, configMap, secret, downwardAPI,
//!   projected, files written atomically) and its containers' CRI mounts, as upstream's volume plugins.
//! - [`config`]: the `KubeletConfiguration` file, strictly decoded, with upstream's fields berth ignores named.
//! - [`cri_client`]: the runtime's unix socket as typed async CRI v1 calls with upstream's deadlines
//!   and errors that keep the RPC and the gRPC code; the only way the kubelet reaches a runtime.
//! - [`pod_cgroup`]: the QoS class and pod cgroups under `kubepods` (cgroupfs driver; v1 and v2).
//! - [`pod_worker`]: a worker per pod that syncs it as upstream's `SyncPod` (sandbox, images,
//!   volumes, init and regular containers, restarts with back-off) and a manager that follows the
//!   manifest source.
//! - [`termination`]: termination message files, and the log tail for `FallbackToLogsOnError`.
//! - [`status`]: each pod's status (phase, conditions, container statuses) as upstream computes it,
//!   kept for the HTTP API and `berth pods`.
//! - [`probe`]: liveness, readiness and startup probes and lifecycle hook actions (exec, tcpSocket,
//!   httpGet over HTTP or HTTPS, gRPC) with upstream's thresholds; the pod worker runs them and
//!   restarts what fails liveness.
//! - [`gc`]: garbage collection of exited containers, dead sandboxes and unused images, as
//!   upstream's container and image GC, run by the pod manager every minute.
//! - [`image_pull`]: the limit on parallel image pulls shared by the pod workers, and each pod's
//!   back-off of failed pulls.

pub mod config;
pub mod cri_client;
pub mod cri_config;
pub mod gc;
pub mod image_pull;
pub mod manifest;
pub mod pod_cgroup;
pub mod pod_worker;
pub mod probe;
pub mod server;
pub mod source;
pub mod static_pod;
pub mod status;
pub mod termination;
pub mod validation;
pub mod volume;
