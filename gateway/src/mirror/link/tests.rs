use super::*;

fn spec() -> LinkSpec {
    LinkSpec {
        target_cluster_name: "east".into(),
        cluster_credentials_secret: "cluster-credentials-east".into(),
        gateway_address: "192.0.2.10, gw.east.example".into(),
        gateway_port: "4143".into(),
        gateway_identity: "isthmus-gateway.isthmus.serviceaccount.identity.linkerd.cluster.local"
            .into(),
        ..LinkSpec::default()
    }
}

#[test]
fn defaults_follow_linkerd() {
    let s = LinkSettings::from_spec(&spec()).unwrap();
    assert_eq!(s.target_domain, "cluster.local");
    assert_eq!(s.gateway_addresses, ["192.0.2.10", "gw.east.example"]);
    assert_eq!(s.selector, "mirror.linkerd.io/exported=true");
    assert_eq!(s.probe.path, "/ready");
    assert_eq!(s.probe.port, 4191);
    assert_eq!(s.probe.period, Duration::from_secs(3));
    assert_eq!(
        s.probe.timeout,
        Duration::from_secs(3),
        "capped at the period"
    );
    assert_eq!(s.probe.failure_threshold, 3);
}

#[test]
fn bad_fields_are_named() {
    type Edit = Box<dyn Fn(&mut LinkSpec)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|s| s.target_cluster_name = "East_1".into()),
            "targetClusterName",
        ),
        (Box::new(|s| s.gateway_port = "70000".into()), "gatewayPort"),
        (
            Box::new(|s| s.gateway_address = " , ".into()),
            "gatewayAddress",
        ),
        (
            Box::new(|s| s.gateway_address = "bad host!".into()),
            "gatewayAddress",
        ),
        (
            Box::new(|s| s.gateway_identity = "a b".into()),
            "gatewayIdentity",
        ),
        (
            Box::new(|s| s.probe_spec.period = Some("3 parsecs".into())),
            "probeSpec.period",
        ),
        (
            Box::new(|s| s.probe_spec.failure_threshold = Some("0".into())),
            "failureThreshold",
        ),
        (
            Box::new(|s| s.probe_spec.path = Some("ready".into())),
            "probeSpec.path",
        ),
        (
            Box::new(|s| s.excluded_labels = vec!["bad key".into()]),
            "excludedLabels",
        ),
        (
            Box::new(|s| {
                s.selector = Some(LabelSelector {
                    match_labels: None,
                    match_expressions: None,
                })
            }),
            "selector",
        ),
    ];
    for (edit, field) in cases {
        let mut s = spec();
        edit(&mut s);
        let e = LinkSettings::from_spec(&s).unwrap_err();
        assert!(e.contains(field), "{e} should name {field}");
    }
}

#[test]
fn go_durations() {
    assert_eq!(go_duration("3s").unwrap(), Duration::from_secs(3));
    assert_eq!(go_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(go_duration("1m30s").unwrap(), Duration::from_secs(90));
    assert!(go_duration("3").is_err());
    assert!(go_duration("").is_err());
    assert!(go_duration("s").is_err());
    assert!(go_duration("99999999h").is_err());
}

#[test]
fn selectors_render_as_the_api_takes_them() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    let s = LabelSelector {
        match_labels: Some(BTreeMap::from([("a".into(), "b".into())])),
        match_expressions: Some(vec![
            LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["x".into(), "y".into()]),
            },
            LabelSelectorRequirement {
                key: "legacy".into(),
                operator: "DoesNotExist".into(),
                values: None,
            },
        ]),
    };
    assert_eq!(selector_string(&s).unwrap(), "a=b,tier in (x,y),!legacy");
}

#[test]
fn exclusion_globs() {
    let p = vec!["team.example/*".to_string(), "app".to_string()];
    assert!(excluded("team.example/owner", &p));
    assert!(excluded("app", &p));
    assert!(!excluded("team.example.evil/owner", &p));
    assert!(!excluded("apps", &p));
}
