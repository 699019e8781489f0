//! Which hosts and Services a route source may claim: the rules that keep a
//! Mapping in one namespace from taking over another namespace's traffic.
//!
//! - A Mapping's `hostname` inside `<ns>.svc.<cluster_domain>` (an exported
//!   Service's FQDN `<svc>.<ns>.svc.<cluster_domain>`, with or without port, or
//!   a wildcard within it) may only come from namespace `<ns>`: otherwise
//!   Accepted=False, reason `HostnameNotOwned`.
//! - A `service` (Mapping) or backendRef (HTTPRoute) in another namespace needs
//!   a `ReferenceGrant` there that lets the referring kind and namespace refer
//!   to that Service (Gateway API semantics): otherwise `RefNotPermitted`.
//!
//! Pure: the index calls [`check_mapping`] where Mappings become routes, and
//! [`permitted`] is the one grant check for every kind.

use std::collections::BTreeMap;

use super::ObjectKey;
use crate::discovery::httproute::ReferenceGrantSpec;
use crate::routes::HostMatch;

/// The API group of `Mapping` (a ReferenceGrant's `from.group`).
pub(crate) const MAPPING_GROUP: &str = "isthmus.dev";

/// Why a Mapping was refused by these rules; the reason is its status
/// condition's `reason`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The hostname belongs to another namespace's Services.
    HostnameNotOwned {
        /// The Mapping's hostname.
        hostname: String,
        /// The namespace that owns it.
        owner: String,
        /// The Service it names, when it is one Service's FQDN.
        service: Option<String>,
    },
    /// The Service is in another namespace and no ReferenceGrant there allows it.
    RefNotPermitted {
        /// The Service (`namespace/name`).
        service: ObjectKey,
    },
}

impl Refusal {
    /// The status condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::HostnameNotOwned { .. } => "HostnameNotOwned",
            Refusal::RefNotPermitted { .. } => "RefNotPermitted",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::HostnameNotOwned {
                hostname,
                owner,
                service: Some(svc),
            } => write!(
                f,
                "hostname {hostname:?} is the name of Service {owner}/{svc}: only a Mapping in namespace {owner} may claim it"
            ),
            Refusal::HostnameNotOwned { hostname, owner, .. } => write!(
                f,
                "hostname {hostname:?} lies within namespace {owner}'s Service names: only a Mapping in namespace {owner} may claim it"
            ),
            Refusal::RefNotPermitted { service } => write!(
                f,
                "service {service} is in another namespace and no ReferenceGrant in namespace {} allows Mappings from this namespace to refer to it",
                service.namespace
            ),
        }
    }
}

/// The namespace whose Service names `host` lies within (`<…>.<ns>.svc.<domain>`),
/// and the Service when `host` is exactly `<svc>.<ns>.svc.<domain>`.
fn owner_of(host: &str, cluster_domain: &str) -> Option<(String, Option<String>)> {
    let suffix = format!(".svc.{cluster_domain}");
    let head = host.strip_suffix(suffix.as_str())?;
    match head.rsplit_once('.') {
        // `<…>.<ns>`: the last label is the namespace.
        Some((rest, ns)) if !ns.is_empty() => {
            let service = (!rest.is_empty() && !rest.contains('.')).then(|| rest.to_string());
            Some((ns.to_string(), service))
        }
        // `<ns>.svc.<domain>` itself is no Service name.
        _ => None,
    }
}

/// Whether a Mapping in `namespace` may serve `host` and route to `service`,
/// given the ReferenceGrants (by `namespace/name`).
pub(super) fn check_mapping(
    namespace: &str,
    host: &HostMatch,
    service: &ObjectKey,
    cluster_domain: &str,
    grants: &BTreeMap<ObjectKey, ReferenceGrantSpec>,
) -> Result<(), Refusal> {
    let (name, owner) = match host {
        HostMatch::Exact(h, _) => (h.to_string(), owner_of(h, cluster_domain)),
        // `.suffix`: its names lie within the suffix's owner (`*.ns.svc.<domain>`).
        HostMatch::Wildcard(s) => (
            format!("*{s}"),
            s.strip_prefix('.')
                .and_then(|s| owner_of(&format!("x.{s}"), cluster_domain).map(|(ns, _)| ns))
                .map(|ns| (ns, None)),
        ),
        HostMatch::Any => (String::new(), None),
    };
    if let Some((owner, service)) = owner {
        if owner != namespace {
            return Err(Refusal::HostnameNotOwned {
                hostname: name,
                owner,
                service,
            });
        }
    }
    if *service.namespace != *namespace
        && !permitted(grants, MAPPING_GROUP, "Mapping", namespace, service)
    {
        return Err(Refusal::RefNotPermitted {
            service: service.clone(),
        });
    }
    Ok(())
}

/// Whether a ReferenceGrant in `service`'s namespace lets objects of
/// `group`/`kind` in `from_namespace` refer to that Service (core group, kind
/// `Service`, the grant naming it or naming none).
pub(crate) fn permitted(
    grants: &BTreeMap<ObjectKey, ReferenceGrantSpec>,
    group: &str,
    kind: &str,
    from_namespace: &str,
    service: &ObjectKey,
) -> bool {
    let start = ObjectKey::new(&service.namespace, "");
    grants
        .range(start..)
        .take_while(|(k, _)| k.namespace == service.namespace)
        .any(|(_, g)| {
            g.from
                .iter()
                .any(|f| f.group == group && f.kind == kind && f.namespace == from_namespace)
                && g.to.iter().any(|t| {
                    t.group.is_empty()
                        && t.kind == "Service"
                        && t.name.as_deref().is_none_or(|n| *n == *service.name)
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::httproute::{GrantFrom, GrantTo};
    use crate::routes::PortMatch;

    const CD: &str = "cluster.local";

    fn exact(h: &str) -> HostMatch {
        HostMatch::Exact(h.into(), PortMatch::Any)
    }

    fn grant(from_ns: &str, kind: &str, name: Option<&str>) -> ReferenceGrantSpec {
        ReferenceGrantSpec {
            from: vec![GrantFrom {
                group: if kind == "Mapping" {
                    MAPPING_GROUP.into()
                } else {
                    "gateway.networking.k8s.io".into()
                },
                kind: kind.into(),
                namespace: from_ns.into(),
            }],
            to: vec![GrantTo {
                group: String::new(),
                kind: "Service".into(),
                name: name.map(str::to_string),
            }],
        }
    }

    fn grants(
        list: &[(&str, &str, ReferenceGrantSpec)],
    ) -> BTreeMap<ObjectKey, ReferenceGrantSpec> {
        list.iter()
            .map(|(ns, n, g)| (ObjectKey::new(ns, n), g.clone()))
            .collect()
    }

    #[test]
    fn a_service_fqdn_is_only_its_namespaces_to_claim() {
        let none = BTreeMap::new();
        let own = ObjectKey::new("evil", "mine");
        for host in [
            exact("podinfo.test.svc.cluster.local"),
            HostMatch::Exact(
                "podinfo.test.svc.cluster.local".into(),
                PortMatch::Port(9898),
            ),
        ] {
            let err = check_mapping("evil", &host, &own, CD, &none).expect_err("refused");
            assert_eq!(err.reason(), "HostnameNotOwned");
            assert_eq!(
                err.to_string(),
                "hostname \"podinfo.test.svc.cluster.local\" is the name of Service test/podinfo: only a Mapping in namespace test may claim it"
            );
        }
        // From its own namespace: fine.
        let own_ns = ObjectKey::new("test", "mine");
        assert_eq!(
            check_mapping(
                "test",
                &exact("podinfo.test.svc.cluster.local"),
                &own_ns,
                CD,
                &none
            ),
            Ok(())
        );
        // Names within the namespace (StatefulSet pods) and wildcards within it.
        let err = check_mapping(
            "evil",
            &exact("pod-0.db.test.svc.cluster.local"),
            &own,
            CD,
            &none,
        )
        .expect_err("refused");
        assert!(
            matches!(&err, Refusal::HostnameNotOwned { owner, service: None, .. } if owner == "test"),
            "{err:?}"
        );
        let err = check_mapping(
            "evil",
            &HostMatch::Wildcard(".test.svc.cluster.local".into()),
            &own,
            CD,
            &none,
        )
        .expect_err("refused");
        assert_eq!(err.reason(), "HostnameNotOwned");
        assert!(
            err.to_string().contains("\"*.test.svc.cluster.local\""),
            "{err}"
        );
        // Other domains, another cluster domain, and `*` are not Service names.
        for host in [
            exact("api.example.com"),
            exact("podinfo.test.svc.other.domain"),
            exact("test.svc.cluster.local"),
            HostMatch::Wildcard(".svc.cluster.local".into()),
            HostMatch::Any,
        ] {
            assert_eq!(
                check_mapping("evil", &host, &own, CD, &none),
                Ok(()),
                "{host:?}"
            );
        }
    }

    #[test]
    fn a_service_in_another_namespace_needs_a_reference_grant() {
        let target = ObjectKey::new("test", "internal");
        let host = exact("api.example.com");
        let err = check_mapping("west", &host, &target, CD, &BTreeMap::new()).expect_err("refused");
        assert_eq!(err.reason(), "RefNotPermitted");
        assert!(err.to_string().contains("service test/internal"), "{err}");

        // Grants that do not fit: wrong namespace, kind, Service name, or in the
        // Mapping's namespace instead of the target's.
        let wrong = grants(&[
            ("test", "other-ns", grant("east", "Mapping", None)),
            ("test", "httproutes", grant("west", "HTTPRoute", None)),
            ("test", "other-svc", grant("west", "Mapping", Some("else"))),
            ("west", "in-source", grant("west", "Mapping", None)),
        ]);
        assert!(check_mapping("west", &host, &target, CD, &wrong).is_err());

        for g in [
            grant("west", "Mapping", None),
            grant("west", "Mapping", Some("internal")),
        ] {
            let ok = grants(&[("test", "allow", g)]);
            assert_eq!(check_mapping("west", &host, &target, CD, &ok), Ok(()));
        }
        // The same namespace needs no grant.
        let same = ObjectKey::new("west", "internal");
        assert_eq!(
            check_mapping("west", &host, &same, CD, &BTreeMap::new()),
            Ok(())
        );
    }

    #[test]
    fn the_hostname_rule_comes_first() {
        let all = grants(&[("test", "allow", grant("evil", "Mapping", None))]);
        let err = check_mapping(
            "evil",
            &exact("podinfo.test.svc.cluster.local"),
            &ObjectKey::new("test", "podinfo"),
            CD,
            &all,
        )
        .expect_err("a grant to the Service does not give its hostname away");
        assert_eq!(err.reason(), "HostnameNotOwned");
    }
}
