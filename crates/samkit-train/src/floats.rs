//! Losses and accuracies in JSON that read back exactly, non-finite ones included.
//!
//! JSON has no NaN or infinity, and serde_json writes them as `null`, which then does not read
//! back as a number: a run whose loss diverged wrote a `trainer.json` no resume could read.
//! With `#[serde(with = "crate::floats")]` a finite value is a JSON number (serde_json writes
//! the shortest representation that reads back to the same bits), and a non-finite one the
//! string `"NaN"`, `"inf"` or `"-inf"`; reading also takes `null` (files written before) as NaN.
use serde::de::{self, Deserializer, Visitor};
use serde::Serializer;

/// The names of the non-finite values (Rust's own spelling, as `f64::to_string` and
/// `str::parse` use it, so the CSV files agree).
const NAN: &str = "NaN";
const INF: &str = "inf";
const NEG_INF: &str = "-inf";

pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_f64(*v)
    } else if v.is_nan() {
        s.serialize_str(NAN)
    } else if *v > 0.0 {
        s.serialize_str(INF)
    } else {
        s.serialize_str(NEG_INF)
    }
}

struct F64;

impl<'de> Visitor<'de> for F64 {
    type Value = f64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number, \"NaN\", \"inf\" or \"-inf\"")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v {
            NAN => Ok(f64::NAN),
            INF => Ok(f64::INFINITY),
            NEG_INF => Ok(f64::NEG_INFINITY),
            other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
        }
    }

    /// `null`: a non-finite value written before this format existed.
    fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
        Ok(f64::NAN)
    }

    fn visit_none<E: de::Error>(self) -> Result<f64, E> {
        Ok(f64::NAN)
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(F64)
}

/// The same for an optional value: `None` is `null`, a NaN the string `"NaN"`.
pub mod opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct W(#[serde(with = "super")] f64);

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        v.map(W).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    struct V(#[serde(with = "super")] f64);

    #[test]
    fn every_value_reads_back_to_the_same_bits() {
        let values = [
            0.0,
            -0.0,
            1.0 / 3.0,
            0.1 + 0.2,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            -1.234_567_890_123_456_7e-3,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        for v in values {
            let text = serde_json::to_string(&V(v)).expect("serializes");
            let back: V = serde_json::from_str(&text).expect("reads back");
            assert_eq!(back.0.to_bits(), v.to_bits(), "{v} -> {text}");
        }
        let old: V = serde_json::from_str("null").expect("a null of an older file");
        assert!(old.0.is_nan());
        assert!(serde_json::from_str::<V>("\"1.5\"").is_err());
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct O(#[serde(with = "super::opt")] Option<f64>);

    #[test]
    fn an_optional_nan_is_not_none() {
        for v in [None, Some(f64::NAN), Some(0.1), Some(f64::NEG_INFINITY)] {
            let text = serde_json::to_string(&O(v)).expect("serializes");
            let back: O = serde_json::from_str(&text).expect("reads back");
            assert_eq!(back.0.map(f64::to_bits), v.map(f64::to_bits), "{text}");
        }
    }
}
