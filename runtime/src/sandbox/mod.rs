//! What a pod sandbox is made of besides its containers: namespaces pinned
//! by bind mounts ([`namespaces`]), and the files its containers share
//! (`/etc/hostname`, `/etc/resolv.conf`, `/etc/hosts`; [`files`]).
//!
//! berth runs no pause container: a pod's network, IPC and UTS namespaces
//! are made on a short-lived thread and kept alive by bind-mounting their
//! nsfs files, so an idle pod costs no process at all.

pub mod files;
pub mod namespaces;
pub mod pidns;
pub mod sysctl;
