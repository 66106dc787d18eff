//! The one JSON form kiln hashes and signs: object keys sorted bytewise, no insignificant
//! whitespace. Sorting is done here, not left to the map type, so no serde_json feature
//! (such as `preserve_order`, switched on by any crate in the build) can change a digest.

use serde::Serialize;
use serde_json::Value;

/// Serialises `value` canonically.
pub fn to_canonical_json<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    let mut out = Vec::new();
    write_value(&value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_value(item, out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn keys_are_sorted_at_every_depth() {
        let v = serde_json::json!({"b": 1, "a": {"z": [ {"y": 2, "x": 1} ], "c": "s"}});
        let s = String::from_utf8(to_canonical_json(&v).unwrap()).unwrap();
        assert_eq!(s, r#"{"a":{"c":"s","z":[{"x":1,"y":2}]},"b":1}"#);
    }

    #[test]
    fn hash_map_order_never_reaches_the_bytes() {
        let mut first = None;
        for _ in 0..32 {
            let m: HashMap<String, String> =
                (0..16).map(|i| (format!("key{i}"), format!("v{i}"))).collect();
            let bytes = to_canonical_json(&m).unwrap();
            match &first {
                None => first = Some(bytes),
                Some(f) => assert_eq!(f, &bytes),
            }
        }
    }
}
