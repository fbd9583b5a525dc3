//! The service proxy, programming nftables.
//!
//! Empty until the service proxy issue: nothing here is used yet.
