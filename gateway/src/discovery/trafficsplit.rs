//! SMI `TrafficSplit` (`split.smi-spec.io` v1alpha1–v1alpha4): the split
//! roots the egress answers for, converted to a version-free form.
//!
//! v1alpha1 weights are Kubernetes quantities (`500m`, `1`, `2k`); later
//! versions are integers. Weights are relative. The linkerd-failover
//! annotation `failover.linkerd.io/primary-service` names a primary backend.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The API group.
pub const GROUP: &str = "split.smi-spec.io";
/// Versions understood, newest first.
pub const VERSIONS: &[&str] = &["v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"];
/// linkerd-failover's primary/backup annotation.
pub const PRIMARY_ANNOTATION: &str = "failover.linkerd.io/primary-service";

/// A TrafficSplit as read from any supported version.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplit {
    /// `split.smi-spec.io/<version>`.
    #[serde(default)]
    pub api_version: String,
    /// Standard metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The spec, decoded per object by [`TrafficSplit::split`].
    #[serde(default)]
    pub spec: Value,
}

/// A split in the index's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// The root (apex) Service's name, in the split's namespace.
    pub root: String,
    /// Backend Service names and relative weights (in thousandths).
    pub backends: Vec<(String, u32)>,
    /// The primary backend, if the failover annotation names one.
    pub primary: Option<String>,
}

impl TrafficSplit {
    /// Validates and converts; the error names the field.
    pub fn split(&self) -> Result<Split, String> {
        let version = self
            .api_version
            .strip_prefix("split.smi-spec.io/")
            .filter(|v| VERSIONS.contains(v))
            .ok_or_else(|| {
                format!(
                    "apiVersion {:?} is not split.smi-spec.io/v1alpha1..v1alpha4",
                    self.api_version
                )
            })?;
        let root = self.spec["service"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or("spec.service is required")?
            .to_string();
        let raw = self.spec["backends"]
            .as_array()
            .filter(|b| !b.is_empty())
            .ok_or("spec.backends must list at least one backend")?;
        if raw.len() > 64 {
            return Err(format!(
                "spec.backends has {} entries; at most 64",
                raw.len()
            ));
        }
        let mut backends = Vec::with_capacity(raw.len());
        for (i, b) in raw.iter().enumerate() {
            let service = b["service"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("spec.backends[{i}].service is required"))?;
            let weight = weight_milli(&b["weight"], version)
                .map_err(|e| format!("spec.backends[{i}].weight: {e}"))?;
            backends.push((service.to_string(), weight));
        }
        let primary = self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PRIMARY_ANNOTATION))
            .cloned();
        if let Some(p) = &primary {
            if !backends.iter().any(|(s, _)| s == p) {
                return Err(format!(
                    "annotation {PRIMARY_ANNOTATION} names {p:?}, which is not a backend"
                ));
            }
        }
        Ok(Split {
            root,
            backends,
            primary,
        })
    }
}

/// A weight in thousandths: v1alpha1 takes a quantity, later versions an integer.
pub fn weight_milli(v: &Value, version: &str) -> Result<u32, String> {
    const MAX: f64 = 1_000_000.0;
    let units: f64 = match v {
        Value::Null if version != "v1alpha4" => 0.0,
        Value::Number(n) => n.as_f64().ok_or("not a number")?,
        Value::String(s) if version == "v1alpha1" => quantity(s)?,
        Value::String(s) => return Err(format!("{s:?}: {version} weights are integers")),
        _ => return Err("must be a number".into()),
    };
    if version != "v1alpha1" && units.fract() != 0.0 {
        return Err(format!("{units}: {version} weights are integers"));
    }
    if !(0.0..=MAX).contains(&units) {
        return Err(format!("{units} is outside 0..{MAX}"));
    }
    Ok((units * 1000.0).round() as u32)
}

/// A Kubernetes quantity (`500m`, `1`, `1.5`, `2k`, `1Ki`) as a number.
fn quantity(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a quantity"))?;
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        _ => return Err(format!("{s:?}: unsupported quantity suffix {suffix:?}")),
    };
    Ok(n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(version: &str, backends: Value) -> TrafficSplit {
        TrafficSplit {
            api_version: format!("split.smi-spec.io/{version}"),
            metadata: ObjectMeta::default(),
            spec: json!({"service": "podinfo", "backends": backends}),
        }
    }

    #[test]
    fn v1alpha1_quantities_and_later_integers() {
        let s = ts(
            "v1alpha1",
            json!([{"service": "podinfo", "weight": "500m"}, {"service": "podinfo-east", "weight": 1}]),
        );
        assert_eq!(
            s.split().unwrap().backends,
            vec![("podinfo".into(), 500), ("podinfo-east".into(), 1000)]
        );
        let s = ts(
            "v1alpha2",
            json!([{"service": "a", "weight": 50}, {"service": "b", "weight": 50}]),
        );
        assert_eq!(s.split().unwrap().backends[1], ("b".into(), 50_000));
        let bad = ts("v1alpha2", json!([{"service": "a", "weight": "500m"}]));
        assert!(bad.split().unwrap_err().contains("integers"));
        let bad = ts("v1alpha4", json!([{"service": "a"}]));
        assert!(bad.split().is_err(), "v1alpha4 requires a weight");
        let bad = ts("v1alpha3", json!([{"service": "a", "weight": -1}]));
        assert!(bad.split().is_err());
        let bad = ts("v2", json!([{"service": "a", "weight": 1}]));
        assert!(bad.split().unwrap_err().contains("apiVersion"));
    }

    #[test]
    fn primary_must_be_a_backend() {
        let mut s = ts(
            "v1alpha2",
            json!([{"service": "a", "weight": 1}, {"service": "b", "weight": 0}]),
        );
        s.metadata.annotations = Some([(PRIMARY_ANNOTATION.to_string(), "a".to_string())].into());
        assert_eq!(s.split().unwrap().primary.as_deref(), Some("a"));
        s.metadata.annotations = Some([(PRIMARY_ANNOTATION.to_string(), "c".to_string())].into());
        assert!(s.split().is_err());
    }
}
