//! The CRI v1 API (`runtime.v1`), compiled with tonic and prost.
//!
//! Empty until the CRI server issue: nothing here is used yet.
