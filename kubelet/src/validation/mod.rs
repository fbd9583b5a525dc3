//! Validation of pods read from manifests, with upstream's field paths and words.
//!
//! `field` is the error type (a path, a kind, the bad value, a detail),
//! `names` the name syntaxes, `pod` the rules.

mod field;
pub mod names;
mod pod;

pub use field::{BadValue, ErrorKind, FieldError, FieldErrors, FieldPath};
pub use pod::validate_pod;

#[cfg(test)]
mod tests;
