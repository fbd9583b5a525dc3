//! The downward API's values that env vars (`valueFrom`) and downwardAPI
//! volumes share: a `resourceFieldRef`'s amount and the `key="value"` form
//! of labels and annotations, computed once here for both.

use std::collections::BTreeMap;

use thiserror::Error;

use super::Allocatable;
use super::quantity::{Quantity, QuantityError};
use super::resources::{CPU, EPHEMERAL_STORAGE, MEMORY, Requirements};

#[derive(Debug, Error)]
pub enum DownwardError {
    /// A divisor that is not a quantity, or rounds to nothing.
    #[error("divisor {divisor:?} is not usable")]
    Divisor {
        divisor: String,
        source: Option<QuantityError>,
    },
    /// A resource the downward API does not offer.
    #[error("unsupported resource {0:?}")]
    Resource(String),
}

/// A `resourceFieldRef` (`requests.cpu`, `limits.memory`, ...) of a
/// container with `requirements`: the amount divided by `divisor` (empty or
/// zero: 1) and rounded up, as upstream. An unset limit reads as the node's
/// allocatable amount.
pub fn resource_value(
    requirements: &Requirements,
    allocatable: &Allocatable,
    resource: &str,
    divisor: &str,
) -> Result<String, DownwardError> {
    let bad_divisor = |source| DownwardError::Divisor {
        divisor: divisor.to_owned(),
        source,
    };
    let divisor_q = match divisor {
        "" => Quantity::from_units(1),
        text => match Quantity::parse(text).map_err(|e| bad_divisor(Some(e)))? {
            q if q.is_zero() => Quantity::from_units(1),
            q => q,
        },
    };
    let unsupported = || DownwardError::Resource(resource.to_owned());
    let (list, name) = resource.split_once('.').ok_or_else(unsupported)?;
    let amount = match list {
        "requests" => requirements.request(name),
        "limits" => match requirements.limits.get(name) {
            Some(q) if !q.is_zero() => *q,
            _ => match name {
                CPU => Quantity::from_millis(allocatable.cpu_millis),
                MEMORY => Quantity::from_units(allocatable.memory),
                EPHEMERAL_STORAGE => Quantity::from_units(allocatable.ephemeral_storage),
                _ => Quantity::ZERO,
            },
        },
        _ => return Err(unsupported()),
    };
    let (numerator, denominator) = match name {
        CPU => (amount.milli_value(), divisor_q.milli_value()),
        MEMORY | EPHEMERAL_STORAGE => (amount.value(), divisor_q.value()),
        r if r.starts_with("hugepages-") => (amount.value(), divisor_q.value()),
        _ => return Err(unsupported()),
    };
    if denominator <= 0 {
        return Err(bad_divisor(None));
    }
    let quotient = numerator.div_euclid(denominator);
    Ok(if numerator.rem_euclid(denominator) == 0 {
        quotient
    } else {
        quotient + 1
    }
    .to_string())
}

/// Labels or annotations as upstream's `FormatMap`: `key="value"` lines in
/// key order, values quoted as Go's `%q`, no newline after the last.
pub fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    let lines: Vec<String> = map
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect();
    lines.join("\n")
}

fn go_quote(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if u32::from(c) < 0x80 && c.is_control() => {
                out.push_str(&format!("\\x{:02x}", u32::from(c)));
            }
            c if c.is_control() && u32::from(c) <= 0xffff => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c if c.is_control() => out.push_str(&format!("\\U{:08x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
