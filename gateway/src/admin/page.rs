//! The admin web page (`GET /`) and the JSON it refreshes itself from
//! (`GET /status.json`; routes page through `GET /routes`).
//!
//! The page is one self-contained HTML document ([`PAGE`], inline CSS and
//! JS, no external assets) of a few tens of KiB whatever the table size:
//! it fetches the data, every [`REFRESH_SECONDS`], instead of embedding it.
//! `/status.json` holds everything but the routes: peers seen, remote
//! gateways, discovery, TLS material and recent errors, each bounded.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde_json::{json, Value};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::AdminState;
use crate::routes::MirrorService;

/// The page (served as is).
pub const PAGE: &str = include_str!("page.html");

/// How often the page fetches `/status.json` and its routes page.
pub const REFRESH_SECONDS: u64 = 3;

/// RFC 3339, UTC; empty if the time cannot be formatted.
pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn opt_time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| json!(rfc3339(t)))
}

/// Subject, SANs, issuer and validity of a DER certificate; `error` when it
/// cannot be parsed.
pub fn cert_summary(der: &[u8]) -> Value {
    let cert = match X509Certificate::from_der(der) {
        Ok((_, c)) => c,
        Err(e) => return json!({"error": format!("unparsable certificate: {e}")}),
    };
    let sans: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::URI(u) => format!("URI:{u}"),
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::IPAddress(ip) => match <[u8; 4]>::try_from(*ip) {
                    Ok(v4) => format!("IP:{}", std::net::Ipv4Addr::from(v4)),
                    Err(_) => match <[u8; 16]>::try_from(*ip) {
                        Ok(v6) => format!("IP:{}", std::net::Ipv6Addr::from(v6)),
                        Err(_) => "IP:?".to_string(),
                    },
                },
                other => format!("{other}"),
            })
            .collect(),
        _ => Vec::new(),
    };
    let validity = cert.validity();
    let not_after = validity.not_after.timestamp();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    json!({
        "subject": cert.subject().to_string(),
        "issuer": cert.issuer().to_string(),
        "sans": sans,
        "not_before": validity.not_before.to_string(),
        "not_after": validity.not_after.to_string(),
        "not_after_unix": not_after,
        "expires_in_days": (not_after - now).div_euclid(86_400),
        "expired": not_after < now,
    })
}

/// The "Remote gateways" rows: mirror Services grouped by cluster. A
/// cluster's gateway is alive when any of its mirrors has a ready endpoint
/// (the mirror controller marks endpoints ready only while its probe of
/// the gateway succeeds). Probe latency is the mirror controller's and is
/// not known here.
pub fn remote_gateways(mirrors: &[MirrorService]) -> Vec<Value> {
    let mut by_cluster: BTreeMap<&str, Vec<&MirrorService>> = BTreeMap::new();
    for m in mirrors {
        by_cluster.entry(&m.cluster).or_default().push(m);
    }
    by_cluster
        .into_iter()
        .map(|(cluster, ms)| {
            let mut addrs: Vec<String> = ms
                .iter()
                .flat_map(|m| &m.ready)
                .map(ToString::to_string)
                .collect();
            addrs.sort();
            addrs.dedup();
            let alive_services = ms.iter().filter(|m| !m.ready.is_empty()).count();
            let dead: Vec<&str> = ms
                .iter()
                .filter(|m| m.ready.is_empty())
                .take(20)
                .map(|m| m.service.as_str())
                .collect();
            json!({
                "cluster": cluster,
                "alive": alive_services > 0,
                "mirrored_services": ms.len(),
                "services_with_ready_endpoints": alive_services,
                "gateway_addresses": addrs,
                "services_without_ready_endpoints": dead,
                "probe_latency": "n/a",
            })
        })
        .collect()
}

/// `/status.json`.
pub fn status(state: &AdminState) -> Value {
    let now = SystemTime::now();
    state.peers.sample(&state.metrics);
    let peers: Vec<Value> = state
        .peers
        .snapshot()
        .into_iter()
        .map(|p| {
            json!({
                "identity": p.identity,
                "requests": p.requests,
                "errors": p.errors,
                "last_seen": opt_time(p.last_seen),
            })
        })
        .collect();
    let table = state.routes.load();
    let d = state.discovery.snapshot();
    let recent: Vec<Value> = state
        .recent
        .snapshot()
        .iter()
        .map(|e| {
            json!({
                "time": rfc3339(e.at),
                "source": e.source,
                "reason": e.reason,
                "status": (e.status != 0).then_some(e.status),
                "route": e.route.as_deref(),
                "peer": e.peer.as_deref(),
                "detail": e.detail,
            })
        })
        .collect();
    let (serving, anchors) = match &state.tls {
        Some(tls) => (
            tls.serving_chain()
                .first()
                .map_or(Value::Null, |c| cert_summary(c)),
            tls.trust_anchors()
                .iter()
                .map(|c| cert_summary(c))
                .collect::<Vec<_>>(),
        ),
        None => (Value::Null, Vec::new()),
    };
    json!({
        "now": rfc3339(now),
        "refresh_seconds": REFRESH_SECONDS,
        "ready": state.readiness.is_ready(),
        "identity": &*state.identity,
        "counts": {
            "routes": table.route_count(),
            "services": table.service_count(),
            "endpoints": table.endpoint_count(),
        },
        "peers": peers,
        "peers_note": format!(
            "from isthmus_requests_total{{peer}}; last seen = first sample (every {}s or on refresh) that saw the count grow",
            super::peers::SAMPLE_PERIOD.as_secs()
        ),
        "remote_gateways": remote_gateways(table.mirrors()),
        "discovery": {
            "source": d.source,
            "synced": state.readiness.discovery_synced(),
            "objects": {
                "services": d.counts.services,
                "endpointslices": d.counts.endpoint_slices,
                "mappings": d.counts.mappings,
            },
            "publishes": d.publishes,
            "last_change": opt_time(d.last_change),
            "errors": d.errors,
            "last_error": d.last_error.as_ref().map(|(t, m)| json!({"time": rfc3339(*t), "message": m})),
        },
        "tls": {"serving": serving, "trust_anchors": anchors},
        "recent_errors": recent,
        "recent_errors_total": state.recent.total(),
    })
}

#[cfg(test)]
mod tests;
