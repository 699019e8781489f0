use super::*;

const MINIMAL: &str = "
tls: {cert: certs/gateway.crt, key: certs/gateway.key, trust_anchors: certs/ca.crt}
discovery: {files: manifests}
";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(
        text,
        Path::new("/etc/isthmus/config.yaml"),
        Path::new("/etc/isthmus"),
    )
}

#[test]
fn defaults_and_relative_paths() {
    let cfg = parse(MINIMAL).expect("minimal config parses");
    assert_eq!(cfg.cluster_domain, "cluster.local");
    assert_eq!(cfg.export_label, "mirror.linkerd.io/exported");
    assert!(cfg.allowed_identities.is_empty(), "default is deny all");
    assert_eq!(cfg.listen.gateway.port(), 4143);
    assert_eq!(cfg.listen.admin.port(), 4191);
    assert_eq!(cfg.listen.probe.port(), 4192);
    assert_eq!(cfg.limits.admin_max_connections, 64);
    assert_eq!(cfg.limits.probe_max_connections, 16);
    assert_eq!(cfg.limits.admin_header_timeout_ms, 5_000);
    assert_eq!(cfg.limits.admin_idle_timeout_ms, 30_000);
    assert_eq!(cfg.tls.cert, Path::new("/etc/isthmus/certs/gateway.crt"));
    match &cfg.discovery {
        Discovery::Files(f) => assert_eq!(f.dir(), Path::new("/etc/isthmus/manifests")),
        other => panic!("unexpected discovery {other:?}"),
    }
}

#[test]
fn unknown_key_is_named() {
    let err = parse(&format!("{MINIMAL}\nallowed_identites: []\n")).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("allowed_identites"), "{msg}");
    assert!(msg.contains("/etc/isthmus/config.yaml"), "{msg}");
}

#[test]
fn unknown_nested_key_is_named() {
    let err = parse("tls: {cert: a, key: b, trust_anchors: c, ca: d}\ndiscovery: {files: m}\n")
        .unwrap_err();
    assert!(err.to_string().contains("unknown field `ca`"), "{err}");
}

#[test]
fn wildcard_off_a_boundary_names_the_entry() {
    for bad in ["spiffe://west.example*", "*west.example"] {
        let err = parse(&format!(
            "{MINIMAL}\nallowed_identities: [\"spiffe://east.example/*\", \"{bad}\"]\n"
        ))
        .expect_err("refused");
        let text = err.to_string();
        assert!(
            text.contains("allowed_identities[1]") && text.contains(bad),
            "{text}"
        );
    }
}

#[test]
fn bad_identity_pattern_names_index() {
    let err = parse(&format!(
        "{MINIMAL}\nallowed_identities: [\"spiffe://west.example/*\", \"a*b\"]\n"
    ))
    .unwrap_err();
    assert!(err.to_string().contains("allowed_identities[1]"), "{err}");
}

#[test]
fn kubernetes_source_and_detailed_files() {
    let cfg = parse("tls: {cert: a, key: b, trust_anchors: c}\ndiscovery: {kubernetes: {}}\n")
        .expect("kubernetes parses");
    assert!(matches!(cfg.discovery, Discovery::Kubernetes(_)));
    let cfg = parse(
        "tls: {cert: a, key: b, trust_anchors: c}\ndiscovery: {files: {dir: m, poll_interval_ms: 50}}\n",
    )
    .expect("detailed files parses");
    match cfg.discovery {
        Discovery::Files(f) => assert_eq!(f.poll_interval(), Duration::from_millis(50)),
        other => panic!("unexpected discovery {other:?}"),
    }
}

#[test]
fn missing_discovery_is_an_error() {
    let err = parse("tls: {cert: a, key: b, trust_anchors: c}\n").unwrap_err();
    assert!(err.to_string().contains("discovery"), "{err}");
}

#[test]
fn zero_admin_limits_are_refused_by_name() {
    let err = parse(&format!(
        "{MINIMAL}\nlimits: {{admin_max_connections: 0}}\n"
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("limits.admin_max_connections"),
        "{err}"
    );
    let err = parse(&format!(
        "{MINIMAL}\nlimits: {{admin_header_timeout_ms: 0}}\n"
    ))
    .unwrap_err();
    assert!(
        err.to_string().contains("limits.admin_header_timeout_ms"),
        "{err}"
    );
}

#[test]
fn log_format_defaults_to_text_and_refuses_others() {
    assert_eq!(parse(MINIMAL).expect("parses").log.format, LogFormat::Text);
    let cfg = parse(&format!("{MINIMAL}log: {{format: json}}\n")).expect("json");
    assert_eq!(cfg.log.format, LogFormat::Json);
    let msg = parse(&format!("{MINIMAL}log: {{format: yaml}}\n"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("yaml") && msg.contains("json"), "{msg}");
    let msg = parse(&format!("{MINIMAL}log: {{formt: json}}\n"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("formt"), "{msg}");
    assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
}

#[test]
fn kubernetes_contact_interval_defaults_to_30s() {
    let cfg = parse("tls: {cert: c, key: k, trust_anchors: a}\ndiscovery: {kubernetes: {}}\n")
        .expect("parses");
    match cfg.discovery {
        Discovery::Kubernetes(k) => assert_eq!(k.contact_interval_ms, 30_000),
        other => panic!("unexpected discovery {other:?}"),
    }
}

#[test]
fn trust_domains_instead_of_one_bundle() {
    let cfg = parse(
        "tls: {cert: a, key: b, trust_domains: [{trust_anchors: certs/west.crt, identities: [\"spiffe://west.example/*\", \"*.west.example\"]}]}\ndiscovery: {files: m}\n",
    )
    .expect("valid");
    assert_eq!(cfg.tls.trust_anchors, None);
    assert_eq!(
        cfg.tls.trust_domains[0].trust_anchors,
        Path::new("/etc/isthmus/certs/west.crt")
    );
    assert_eq!(cfg.tls.trust_domains[0].identities.len(), 2);
    for (text, want) in [
        ("tls: {cert: a, key: b}", "tls.trust_domains: set tls.trust_domains"),
        (
            "tls: {cert: a, key: b, trust_anchors: c, trust_domains: [{trust_anchors: w, identities: [\"*\"]}]}",
            "tls.trust_anchors: set tls.trust_domains or tls.trust_anchors, not both",
        ),
        (
            "tls: {cert: a, key: b, trust_domains: [{trust_anchors: w, identities: []}]}",
            "tls.trust_domains[0].identities: must list at least one",
        ),
        (
            "tls: {cert: a, key: b, trust_domains: [{trust_anchors: w, identities: [\"spiffe://w/*\", \"*west\"]}]}",
            "tls.trust_domains[0].identities[1]",
        ),
        (
            "tls: {cert: a, key: b, trust_domains: [{trust_anchors: w, identities: [\"*\"], ca: x}]}",
            "unknown field `ca`",
        ),
    ] {
        let err = parse(&format!("{text}\ndiscovery: {{files: m}}\n")).expect_err(text);
        assert!(err.to_string().contains(want), "{want} not in {err}");
    }
}
