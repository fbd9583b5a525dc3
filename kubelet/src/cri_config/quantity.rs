//! Resource quantities (`500m`, `1Gi`, `1e3`) as numbers, rounded the way
//! upstream's `resource.Quantity` rounds them: `value()` and `milli_value()`
//! round up, so that a request is never made smaller than written.

use thiserror::Error;

/// Errors of this module.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum QuantityError {
    /// Not a quantity at all.
    #[error("quantity {0:?} is not a number with an optional suffix (such as 500m, 1Gi, 1e3)")]
    Syntax(String),
    /// A quantity past what the kubelet can count (about 10^29).
    #[error("quantity {0:?} is too large")]
    Overflow(String),
}

const NANOS_PER_UNIT: i128 = 1_000_000_000;

/// A quantity counted in units of 10^-9: exact for every suffix down to `n`,
/// and wide enough for `Ei` quantities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    nanos: i128,
}

enum Multiplier {
    Decimal(i32),
    Binary(u32),
}

impl Quantity {
    /// Nothing.
    pub const ZERO: Self = Self { nanos: 0 };

    /// `units` whole units (cores, bytes).
    pub fn from_units(units: i64) -> Self {
        Self {
            nanos: i128::from(units) * NANOS_PER_UNIT,
        }
    }

    /// `millis` thousandths (millicores).
    pub fn from_millis(millis: i64) -> Self {
        Self {
            nanos: i128::from(millis) * 1_000_000,
        }
    }

    /// Parses Kubernetes' quantity syntax: a signed decimal number followed by
    /// nothing, an SI suffix (`n u m k M G T P E`), a binary one (`Ki`..`Ei`)
    /// or an exponent (`e3`, `E-2`).
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let syntax = || QuantityError::Syntax(text.to_owned());
        let overflow = || QuantityError::Overflow(text.to_owned());
        let (negative, rest) = match text.as_bytes().first() {
            Some(b'-') => (true, &text[1..]),
            Some(b'+') => (false, &text[1..]),
            _ => (false, text),
        };
        let number_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let (number, suffix) = rest.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(syntax());
        }
        let mut mantissa: i128 = 0;
        for b in whole.bytes().chain(fraction.bytes()) {
            mantissa = mantissa
                .checked_mul(10)
                .and_then(|m| m.checked_add(i128::from(b - b'0')))
                .ok_or_else(overflow)?;
        }
        let fraction_digits = i32::try_from(fraction.len()).map_err(|_| overflow())?;
        let nanos = match multiplier(suffix).ok_or_else(syntax)? {
            Multiplier::Decimal(exponent) => {
                let exponent = exponent
                    .checked_add(9 - fraction_digits)
                    .ok_or_else(overflow)?;
                scale_by_ten(mantissa, exponent).ok_or_else(overflow)?
            }
            Multiplier::Binary(shift) => {
                let scaled = mantissa
                    .checked_mul(1i128 << shift)
                    .and_then(|m| m.checked_mul(NANOS_PER_UNIT))
                    .ok_or_else(overflow)?;
                scale_by_ten(scaled, -fraction_digits).ok_or_else(overflow)?
            }
        };
        Ok(Self {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    /// The quantity in thousandths, rounded up (upstream's `MilliValue`).
    pub fn milli_value(self) -> i64 {
        saturate(ceil_div(self.nanos, 1_000_000))
    }

    /// The quantity in whole units, rounded up (upstream's `Value`).
    pub fn value(self) -> i64 {
        saturate(ceil_div(self.nanos, NANOS_PER_UNIT))
    }

    /// Whether the quantity is more than zero.
    pub fn is_positive(self) -> bool {
        self.nanos > 0
    }

    /// Whether the quantity is zero.
    pub fn is_zero(self) -> bool {
        self.nanos == 0
    }
}

impl std::ops::Add for Quantity {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            nanos: self.nanos.saturating_add(other.nanos),
        }
    }
}

fn multiplier(suffix: &str) -> Option<Multiplier> {
    let decimal = |e| Some(Multiplier::Decimal(e));
    let binary = |s| Some(Multiplier::Binary(s));
    match suffix {
        "" => decimal(0),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        _ => {
            let exponent = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            let digits = exponent.trim_start_matches(['+', '-']);
            // One sign at most, then digits only.
            if digits.is_empty()
                || exponent.len() - digits.len() > 1
                || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            exponent.parse().ok().map(Multiplier::Decimal)
        }
    }
}

/// `value` × 10^`exponent`, rounded up when the exponent is negative.
fn scale_by_ten(value: i128, exponent: i32) -> Option<i128> {
    if exponent >= 0 {
        10i128
            .checked_pow(u32::try_from(exponent).ok()?)
            .and_then(|p| value.checked_mul(p))
    } else {
        match 10i128.checked_pow(exponent.unsigned_abs()) {
            Some(p) => Some(ceil_div(value, p)),
            // Smaller than one nano: what is left is the rounding up.
            None => Some(i128::from(value > 0)),
        }
    }
}

fn ceil_div(value: i128, divisor: i128) -> i128 {
    let quotient = value.div_euclid(divisor);
    if value.rem_euclid(divisor) == 0 {
        quotient
    } else {
        quotient + 1
    }
}

fn saturate(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value > 0 { i64::MAX } else { i64::MIN })
}
