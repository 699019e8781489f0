//! `isthmus diagnose`: checks a live installation end to end and says what to
//! do about each problem. Unlike a check of config values (linkerd2#11668), the
//! trust checks take the certificate chains the gateways actually present and
//! the trust anchors the gateway Deployments actually mount.
//!
//! ```text
//! crds.rs ─▶ links.rs (per Link) ─▶ credentials.rs ─▶ anchors.rs + trust.rs ─▶ probe.rs ─▶ endpoints.rs
//! ```
//! Each check returns [`Finding`]s; [`Report`] prints them and decides the exit code
//! (any failure: 1; warnings alone: 0).

pub mod anchors;
pub mod cluster;
pub mod crds;
pub mod credentials;
pub mod endpoints;
pub mod links;
pub mod probe;
pub mod trust;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use kube::Client;

use crate::mirror::probe::Resolve;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The check passed.
    Ok,
    /// Not run because a check it depends on failed.
    Skipped,
    /// Works now, needs attention soon (a certificate expiring within 30 days).
    Warn,
    /// Broken.
    Fail,
}

impl Severity {
    /// Every severity.
    pub const ALL: [Severity; 4] = [
        Severity::Ok,
        Severity::Skipped,
        Severity::Warn,
        Severity::Fail,
    ];

    /// The mark printed before the finding.
    pub fn mark(self) -> &'static str {
        match self {
            Severity::Ok => "✔",
            Severity::Skipped => "-",
            Severity::Warn => "‼",
            Severity::Fail => "✘",
        }
    }
}

/// One result of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Ok, skipped, warning or failure.
    pub severity: Severity,
    /// What was found (one line).
    pub message: String,
    /// What to do (failures and warnings).
    pub hint: Option<String>,
}

impl Finding {
    /// A passed check.
    pub fn ok(message: impl Into<String>) -> Finding {
        Finding {
            severity: Severity::Ok,
            message: message.into(),
            hint: None,
        }
    }

    /// A failure and what to do about it.
    pub fn fail(message: impl Into<String>, hint: impl Into<String>) -> Finding {
        Finding {
            severity: Severity::Fail,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// A warning and what to do about it.
    pub fn warn(message: impl Into<String>, hint: impl Into<String>) -> Finding {
        Finding {
            severity: Severity::Warn,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// A check not run, and why.
    pub fn skipped(message: impl Into<String>) -> Finding {
        Finding {
            severity: Severity::Skipped,
            message: message.into(),
            hint: None,
        }
    }
}

/// Every finding, in sections (`this cluster`, `link isthmus/east`).
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Section title and its findings, in the order checked.
    pub sections: Vec<(String, Vec<Finding>)>,
}

impl Report {
    /// Whether any check failed (the exit code is then 1).
    pub fn failed(&self) -> bool {
        self.findings().any(|f| f.severity == Severity::Fail)
    }

    /// Every finding of every section.
    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.sections.iter().flat_map(|(_, f)| f.iter())
    }

    /// The report as printed: a title per section, one line per finding, the
    /// hint on the next line, and a summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (title, findings) in &self.sections {
            let _ = writeln!(out, "{title}");
            for f in findings {
                let _ = writeln!(out, "  {} {}", f.severity.mark(), f.message);
                if let Some(h) = &f.hint {
                    let _ = writeln!(out, "      → {h}");
                }
            }
            out.push('\n');
        }
        let count = |s: Severity| self.findings().filter(|f| f.severity == s).count();
        let _ = writeln!(
            out,
            "{} ok, {} warnings, {} failed, {} skipped",
            count(Severity::Ok),
            count(Severity::Warn),
            count(Severity::Fail),
            count(Severity::Skipped)
        );
        out
    }
}

/// What `isthmus diagnose` looks at.
#[derive(Clone)]
pub struct Options {
    /// Namespace of the Links (`None`: all namespaces).
    pub namespace: Option<String>,
    /// Namespace of the gateway Service and Deployment, in both clusters.
    pub gateway_namespace: String,
    /// The gateway Service's name, in both clusters.
    pub gateway_name: String,
    /// This cluster's gateway, instead of the address of its Service.
    pub local_gateway: Option<SocketAddr>,
    /// Gateway address resolver.
    pub resolver: Arc<dyn Resolve>,
}

/// Runs every check against this cluster (`local`) and each Link's target.
pub async fn run(local: &Client, opts: &Options) -> Report {
    let mut report = Report::default();
    let mut here = crds::check(local).await;
    let links_ok = here.iter().all(|f| f.severity != Severity::Fail);
    let local_gateway = anchors::Side::read(local, opts, "this cluster", opts.local_gateway).await;
    here.extend(local_gateway.findings.clone());
    let links = if links_ok {
        links::list(local, opts.namespace.as_deref()).await
    } else {
        Err(Finding::skipped(
            "Links not checked: the Link CRD is missing",
        ))
    };
    let links = match links {
        Ok(l) => l,
        Err(f) => {
            here.push(f);
            report.sections.push(("this cluster".into(), here));
            return report;
        }
    };
    if links.is_empty() {
        here.push(Finding::warn(
            "no Links in this cluster",
            "link a peer: isthmus link --cluster-name NAME --kubeconfig PEER | kubectl apply -f -",
        ));
    }
    here.extend(endpoints::mirrors_here(local, &links).await);
    report.sections.push(("this cluster".into(), here));
    for link in &links {
        let title = format!(
            "link {}/{} (cluster {})",
            link.namespace,
            link.name,
            link.target()
        );
        let mut findings = link.findings.clone();
        if let Some(settings) = &link.settings {
            let remote = credentials::check(local, link, settings, opts).await;
            findings.extend(remote.findings.clone());
            findings.extend(trust::check(settings, &remote, &local_gateway, opts).await);
            findings.push(probe::check(settings, opts).await);
            findings.extend(endpoints::exported_there(settings, &remote).await);
        }
        report.sections.push((title, findings));
    }
    report
}
