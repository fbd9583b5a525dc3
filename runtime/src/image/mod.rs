//! Images: references, the registry client, the content store, layers and overlay snapshots.
//!
//! A pull is a pipeline: `reference` names the image, `registry` resolves it to a
//! manifest and streams its blobs, `content` stores each blob under its digest
//! (verified before it becomes visible), `layer` unpacks each layer once into its
//! own directory, and `snapshot` stacks layer directories into a container's
//! overlay root filesystem.

pub mod archive;
pub mod content;
pub mod digest;
pub mod layer;
pub mod meta;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod snapshot;
pub mod store;
