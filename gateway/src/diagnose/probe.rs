//! Check: the remote gateway answers its probe as the controller sends it
//! (the Link's addresses, probe port and path; exactly 200).

use std::time::Duration;

use super::{Finding, Options};
use crate::mirror::link::LinkSettings;
use crate::mirror::probe::{probe, resolve_all};

/// How long the probe may take here (the Link's timeout, at most this).
const MAX_TIMEOUT: Duration = Duration::from_secs(5);

/// One finding: reachable (with latency) or why not.
pub async fn check(s: &LinkSettings, opts: &Options) -> Finding {
    let target = &s.target;
    let p = &s.probe;
    let url = format!(
        "http://{}:{}{}",
        s.gateway_addresses.join(","),
        p.port,
        p.path
    );
    let hint = format!(
        "is {target}'s gateway running? Its probe port {} must be published by its LoadBalancer (port mc-probe) and reachable from here",
        p.port
    );
    let ips = match resolve_all(&opts.resolver, &s.gateway_addresses).await {
        Ok(ips) => ips,
        Err(e) => return Finding::fail(format!("{target}'s gateway probe {url}: {e}"), hint),
    };
    let host = format!("probe-{target}:{}", p.port);
    match probe(&ips, p.port, &p.path, &host, p.timeout.min(MAX_TIMEOUT)).await {
        Ok(d) => Finding::ok(format!(
            "{target}'s gateway answers its probe {url} with 200 in {:.1}ms",
            d.as_secs_f64() * 1000.0
        )),
        Err(e) => Finding::fail(format!("{target}'s gateway probe {url} failed: {e}"), hint),
    }
}
