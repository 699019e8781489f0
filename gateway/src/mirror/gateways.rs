//! `isthmus gateways`: one row per Link, read from the Link status the
//! controller writes (liveness, mirrored Services, probe-latency percentiles),
//! so the view needs only the API server, like `kubectl get`.

use kube::api::{Api, ListParams};
use kube::Client;
use serde::Serialize;

use super::link::{LatencyPercentiles, Link};

/// One Link's gateway as the controller last reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRow {
    /// The Link's namespace.
    pub namespace: String,
    /// The Link's name.
    pub link: String,
    /// The target cluster.
    pub cluster: String,
    /// Alive per the last probes; `None` before the controller wrote a status.
    pub alive: Option<bool>,
    /// Mirrored Services; `None` before the controller wrote a status.
    pub services: Option<u32>,
    /// Probe latency percentiles; `None` before the first successful probe.
    pub latency: Option<LatencyPercentiles>,
    /// RFC 3339 time of the last probe, if any.
    pub last_probe_time: Option<String>,
}

/// The row of one Link.
pub fn row(link: &Link) -> GatewayRow {
    let status = link.status.as_ref();
    let gateway = status.and_then(|s| s.gateway.as_ref());
    GatewayRow {
        namespace: link.metadata.namespace.clone().unwrap_or_default(),
        link: link.metadata.name.clone().unwrap_or_default(),
        cluster: link.spec.target_cluster_name.clone(),
        alive: gateway.map(|g| g.alive),
        services: status.map(|s| s.mirrored_services),
        latency: gateway.and_then(|g| g.latency.clone()),
        last_probe_time: gateway.and_then(|g| g.last_probe_time.clone()),
    }
}

/// Every Link in every namespace (or in `namespace`), as rows sorted by cluster.
pub async fn list(
    client: &Client,
    namespace: Option<&str>,
) -> Result<Vec<GatewayRow>, kube::Error> {
    let api: Api<Link> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let links = api.list(&ListParams::default()).await?;
    let mut rows: Vec<GatewayRow> = links.items.iter().map(row).collect();
    rows.sort_by(|a, b| {
        (&a.cluster, &a.namespace, &a.link).cmp(&(&b.cluster, &b.namespace, &b.link))
    });
    Ok(rows)
}

/// Microseconds as milliseconds with one decimal (`0.4ms`, `12.0ms`).
fn ms(micros: u64) -> String {
    format!("{}.{}ms", micros / 1000, (micros % 1000) / 100)
}

/// The table `isthmus gateways` prints (`unknown` where nothing was reported yet).
pub fn table(rows: &[GatewayRow]) -> String {
    let unknown = || "unknown".to_string();
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let (p50, p95, p99) = match &r.latency {
                Some(l) => (ms(l.p50_micros), ms(l.p95_micros), ms(l.p99_micros)),
                None => (unknown(), unknown(), unknown()),
            };
            [
                r.cluster.clone(),
                r.alive
                    .map_or_else(unknown, |a| if a { "True" } else { "False" }.into()),
                r.services.map_or_else(unknown, |n| n.to_string()),
                p50,
                p95,
                p99,
            ]
        })
        .collect();
    let header = [
        "CLUSTER",
        "ALIVE",
        "NUM_SVC",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
    ];
    let mut widths = header.map(str::len);
    for c in &cells {
        for (w, v) in widths.iter_mut().zip(c) {
            *w = (*w).max(v.len());
        }
    }
    let line = |values: &[&str]| {
        let mut s = String::new();
        for (i, (v, w)) in values.iter().zip(widths).enumerate() {
            if i + 1 == values.len() {
                s.push_str(v);
            } else {
                s.push_str(&format!("{v:<w$}   "));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(&header);
    for c in &cells {
        out.push_str(&line(&c.iter().map(String::as_str).collect::<Vec<_>>()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::link::{GatewayStatus, LinkSpec, LinkStatus};

    fn link(name: &str, status: Option<LinkStatus>) -> Link {
        let mut l = Link::new(
            name,
            LinkSpec {
                target_cluster_name: name.into(),
                ..LinkSpec::default()
            },
        );
        l.metadata.namespace = Some("isthmus".into());
        l.status = status;
        l
    }

    #[test]
    fn no_status_is_unknown_not_zero() {
        let rows = vec![row(&link("east", None))];
        assert_eq!(rows[0].alive, None);
        let t = table(&rows);
        assert_eq!(
            t.lines().nth(1),
            Some("east      unknown   unknown   unknown       unknown       unknown")
        );
    }

    #[test]
    fn status_fills_every_column() {
        let status = LinkStatus {
            gateway: Some(GatewayStatus {
                alive: true,
                latency: Some(LatencyPercentiles {
                    p50_micros: 400,
                    p95_micros: 1_250,
                    p99_micros: 12_000,
                    samples: 10,
                }),
                ..GatewayStatus::default()
            }),
            mirrored_services: 3,
            ..LinkStatus::default()
        };
        let t = table(&[row(&link("east", Some(status)))]);
        let mut lines = t.lines();
        assert_eq!(
            lines.next(),
            Some("CLUSTER   ALIVE   NUM_SVC   LATENCY_P50   LATENCY_P95   LATENCY_P99")
        );
        assert_eq!(
            lines.next(),
            Some("east      True    3         0.4ms         1.2ms         12.0ms")
        );
    }
}
