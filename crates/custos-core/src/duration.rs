//! Human durations such as `30m`, `1h`, `90s` or `1h30m`, and [`BoundedDuration`], a
//! duration field of a resource parsed and bounds-checked once, when it is read.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Parses a duration written as one or more `<number><unit>` parts, units `ms`, `s`, `m`, `h`, `d`.
///
/// # Errors
/// A message naming the input when it is empty, has no unit, an unknown unit or overflows.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".to_owned());
    }
    let bad = || format!("invalid duration `{input}`: expected e.g. `90s`, `30m`, `1h`");
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(unit_ms)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_millis(total))
}

/// Formats a duration the way [`parse_duration`] reads it, in the largest exact unit.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// What one duration field of a resource allows: its name (for errors) and its bounds.
pub trait DurationField {
    /// The field's YAML key, named in errors.
    const FIELD: &'static str;
    /// The shortest value accepted.
    const MIN: Duration;
    /// The longest value accepted.
    const MAX: Duration;
}

/// A duration field as the user wrote it (`30m`) together with its value, which lies within
/// `F`'s bounds. It serializes back to the text it was read from, so a stored spec and the
/// API's JSON show what the user wrote.
// INVARIANT: `value == parse_duration(&text)` and `F::MIN <= value <= F::MAX`; only
// [`BoundedDuration::parse`] builds one.
pub struct BoundedDuration<F> {
    text: String,
    value: Duration,
    field: PhantomData<fn() -> F>,
}

impl<F: DurationField> BoundedDuration<F> {
    /// Reads `text` as a duration within `F`'s bounds.
    ///
    /// # Errors
    /// A message naming the field when `text` is not a duration or out of bounds.
    pub fn parse(text: &str) -> Result<Self, String> {
        let value = parse_duration(text).map_err(|e| format!("field `{}`: {e}", F::FIELD))?;
        if value < F::MIN || value > F::MAX {
            return Err(format!(
                "field `{}`: `{text}` must be between {} and {}",
                F::FIELD,
                format_duration(F::MIN),
                format_duration(F::MAX)
            ));
        }
        Ok(Self {
            text: text.to_owned(),
            value,
            field: PhantomData,
        })
    }
}

impl<F> BoundedDuration<F> {
    /// The duration.
    pub fn get(&self) -> Duration {
        self.value
    }

    /// The text it was read from.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

// Manual impls: derives would demand the same of the marker type `F`.
impl<F> Clone for BoundedDuration<F> {
    fn clone(&self) -> Self {
        Self {
            text: self.text.clone(),
            value: self.value,
            field: PhantomData,
        }
    }
}

/// Equal when written alike: `30m` and `1800s` are different specs (a change is a new version).
impl<F> PartialEq for BoundedDuration<F> {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<F> Eq for BoundedDuration<F> {}

impl<F> fmt::Debug for BoundedDuration<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({:?})", self.text, self.value)
    }
}

impl<F> fmt::Display for BoundedDuration<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl<F: DurationField> FromStr for BoundedDuration<F> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl<F> Serialize for BoundedDuration<F> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de, F: DurationField> Deserialize<'de> for BoundedDuration<F> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<F>(PhantomData<fn() -> F>);
        impl<F: DurationField> serde::de::Visitor<'_> for Visit<F> {
            type Value = BoundedDuration<F>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a duration such as `30s` in field `{}`", F::FIELD)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                BoundedDuration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(Visit(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_sums() {
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(format_duration(Duration::from_secs(5400)), "90m");
    }

    enum Minutes {}
    impl DurationField for Minutes {
        const FIELD: &'static str = "wait";
        const MIN: Duration = Duration::from_secs(60);
        const MAX: Duration = Duration::from_secs(600);
    }

    #[test]
    fn bounded_durations_keep_their_text_and_name_their_field() {
        let d: BoundedDuration<Minutes> = serde_json::from_str(r#""2m""#).expect("2m");
        assert_eq!((d.get(), d.as_str()), (Duration::from_secs(120), "2m"));
        assert_eq!(serde_json::to_string(&d).expect("json"), r#""2m""#);
        assert_ne!(d, "120s".parse().expect("120s"));
        let e = BoundedDuration::<Minutes>::parse("30s").expect_err("too short");
        assert_eq!(e, "field `wait`: `30s` must be between 1m and 10m");
        let e = BoundedDuration::<Minutes>::parse("soon").expect_err("not a duration");
        assert!(
            e.starts_with("field `wait`: invalid duration `soon`"),
            "{e}"
        );
        let e = serde_json::from_str::<BoundedDuration<Minutes>>("5").expect_err("a number");
        assert!(e.to_string().contains("in field `wait`"), "{e}");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "m", "30", "30x", "-1s", "1.5h", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }
}
