//! Tiny builders for the Kubernetes YAML the file source reads.

use std::net::SocketAddr;

/// A Service with one port named `http` (targetPort `http`).
pub fn service(ns: &str, name: &str, exported: bool, port: u16) -> String {
    let labels = if exported {
        "\n  labels:\n    mirror.linkerd.io/exported: \"true\""
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}{labels}\nspec:\n  ports:\n    - name: http\n      port: {port}\n      targetPort: http\n"
    )
}

/// An EndpointSlice for `svc` whose port `http` is `addr`'s port, with `addr` ready or not.
pub fn slice(ns: &str, name: &str, svc: &str, addr: SocketAddr, ready: bool) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {svc}\naddressType: IPv4\nports:\n  - name: http\n    port: {port}\nendpoints:\n  - addresses: [\"{ip}\"]\n    conditions:\n      ready: {ready}\n",
        port = addr.port(),
        ip = addr.ip(),
    )
}

/// A Service plus one EndpointSlice pointing at `addr`, as one multi-document file.
pub fn exported_service(ns: &str, name: &str, port: u16, addr: SocketAddr) -> String {
    format!(
        "{}---\n{}",
        service(ns, name, true, port),
        slice(ns, &format!("{name}-1"), name, addr, true)
    )
}

/// A Mapping with the given spec body (YAML lines indented by four spaces).
pub fn mapping(ns: &str, name: &str, spec: &str) -> String {
    format!("apiVersion: isthmus.dev/v1alpha1\nkind: Mapping\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}")
}

/// Parses one of the YAML builders above into its typed object (for the API-server double).
pub fn typed<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

/// An EndpointSlice with several endpoints `(address, ready)` sharing one port named `http`.
pub fn slice_many(ns: &str, name: &str, svc: &str, port: u16, eps: &[(&str, bool)]) -> String {
    let endpoints: String = eps
        .iter()
        .map(|(ip, ready)| {
            format!("  - addresses: [\"{ip}\"]\n    conditions:\n      ready: {ready}\n")
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {svc}\naddressType: IPv4\nports:\n  - name: http\n    port: {port}\nendpoints:\n{endpoints}"
    )
}

/// An exported Service whose port `http` has `appProtocol: <proto>`, plus an
/// EndpointSlice pointing at `addr`.
pub fn exported_service_app_protocol(
    ns: &str,
    name: &str,
    port: u16,
    addr: SocketAddr,
    proto: &str,
) -> String {
    let svc = service(ns, name, true, port).replace(
        "      targetPort: http\n",
        &format!("      targetPort: http\n      appProtocol: {proto}\n"),
    );
    format!(
        "{svc}---\n{}",
        slice(ns, &format!("{name}-1"), name, addr, true)
    )
}
