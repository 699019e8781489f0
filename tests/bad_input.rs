//! The bad-input table: every kind of refused or odd input a peer can send,
//! through real sockets, with the exact answer (TLS alert or HTTP status), who
//! gave it (the gateway's own answer carries `x-isthmus-error`, pingora's HTTP/1
//! parser answers bare), the metric it is counted in, and that the connection is
//! closed afterwards. After every row a good client still gets 200.

use std::collections::BTreeMap;
use std::time::Duration;

use isthmus::tls::dev::{LeafSpec, GATEWAY_IDENTITY};
use isthmus_tests::client::RawExchange;
use isthmus_tests::manifests::{exported_service, service, slice};
use isthmus_tests::{Client, Harness, Upstream};
use rustls::AlertDescription;

const HOST: &str = "podinfo.test.svc.cluster.local:9898";

/// How long a row waits for the gateway to answer and close.
const WAIT: Duration = Duration::from_secs(5);

/// The answer a row must get.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// The TLS handshake is refused with this alert, counted in
    /// `isthmus_tls_handshake_failures_total{reason}`.
    Refused(AlertDescription, &'static str),
    /// The gateway answers this status itself (`x-isthmus-error: <reason>`),
    /// counted in `isthmus_request_errors_total{reason}`.
    Gateway(u16, &'static str),
    /// pingora's HTTP/1 parser refuses the request before any gateway hook
    /// runs: this status, no `x-isthmus-error`; the gateway's stream wrapper
    /// counts it as `isthmus_request_errors_total{reason="unparsable_request"}`.
    Parser(u16),
    /// The request is proxied and the podinfo upstream answers 200.
    Upstream,
}

struct Case {
    name: &'static str,
    client: Client,
    request: Vec<u8>,
    want: Want,
}

/// A GET for `host` that asks the gateway to close afterwards.
fn get(host: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A request with extra header lines (each ending in CRLF).
fn get_with(extra: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n").into_bytes()
}

/// A second request pipelined behind a smuggling attempt: if the gateway
/// answered it, the first request's framing was read two ways.
fn smuggled() -> String {
    format!("GET /smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
}

fn cases(h: &Harness) -> Vec<Case> {
    let good = h.client("peer-west");
    let ca = h.certs().join("ca.crt");

    let mut server_only = LeafSpec::peer_uri("spiffe://west.example/ns/default/sa/server");
    server_only.ekus = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    h.issue_cert("server-only", &server_only);
    h.issue_cert("no-san", &LeafSpec::default());
    h.issue_cert(
        "space-in-identity",
        &LeafSpec::peer_uri("spiffe://west.example/ns/default/sa/a b"),
    );

    let many_headers: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let too_many_for_parser: String = (0..300).map(|i| format!("x-h{i}: v\r\n")).collect();
    let non_utf8_host =
        b"GET / HTTP/1.1\r\nHost: pod\xffinfo.test.svc.cluster.local:9898\r\n\r\n".to_vec();

    let case = |name, client: &Client, request: Vec<u8>, want| Case {
        name,
        client: client.clone(),
        request,
        want,
    };
    vec![
        // The handshake.
        case("no client certificate", &h.anonymous_client(), get(HOST),
            Want::Refused(AlertDescription::CertificateRequired, "no_client_cert")),
        case("certificate from another CA", &h.client("peer-untrusted"), get(HOST),
            Want::Refused(AlertDescription::UnknownCA, "unknown_ca")),
        case("expired certificate", &h.client("peer-expired"), get(HOST),
            Want::Refused(AlertDescription::CertificateExpired, "expired")),
        case("certificate without any SAN", &h.client("no-san"), get(HOST),
            Want::Refused(AlertDescription::CertificateUnknown, "bad_certificate")),
        case("identity with whitespace", &h.client("space-in-identity"), get(HOST),
            Want::Refused(AlertDescription::CertificateUnknown, "bad_identity")),
        case("certificate for server use only (EKU serverAuth)", &h.client("server-only"), get(HOST),
            Want::Refused(AlertDescription::UnsupportedCertificate, "bad_certificate")),
        // SNI is not used for routing or certificate choice: any SNI, or none, is served.
        case("SNI naming another host", &good.with_foreign_sni("other.example", &ca), get(HOST),
            Want::Upstream),
        case("no SNI (IP address)", &good.with_sni("127.0.0.1"), get(HOST), Want::Upstream),
        // Framing: request smuggling attempts are refused and the connection closed
        // without reading the pipelined request behind them.
        case("Content-Length with Transfer-Encoding", &good,
            format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}", smuggled()).into_bytes(),
            Want::Gateway(400, "bad_request")),
        case("Transfer-Encoding with Content-Length (reversed order)", &good,
            format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\ncontent-length: 40\r\n\r\n0\r\n\r\n{}", smuggled()).into_bytes(),
            Want::Gateway(400, "bad_request")),
        case("Transfer-Encoding not ending in chunked", &good,
            format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: identity\r\n\r\n{}", smuggled()).into_bytes(),
            Want::Parser(400)),
        case("two different Content-Lengths", &good,
            format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd{}", smuggled()).into_bytes(),
            Want::Parser(400)),
        case("obs-fold header line", &good,
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Folded: a\r\n b\r\n\r\n{}", smuggled()).into_bytes(),
            Want::Parser(400)),
        case("Transfer-Encoding in HTTP/1.0", &good,
            format!("POST / HTTP/1.0\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{}", smuggled()).into_bytes(),
            Want::Parser(400)),
        case("whitespace before the colon (Transfer-Encoding : chunked)", &good,
            format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{}", smuggled()).into_bytes(),
            Want::Parser(400)),
        case("bare LF line endings", &good,
            format!("GET / HTTP/1.1\nHost: {HOST}\n\n{}", smuggled()).into_bytes(),
            Want::Gateway(400, "bad_request")),
        case("one bare LF among CRLF lines", &good,
            format!("GET / HTTP/1.1\r\nHost: {HOST}\nX-A: b\r\n\r\n{}", smuggled()).into_bytes(),
            Want::Gateway(400, "bad_request")),
        // The authority.
        case("no Host", &good, b"GET / HTTP/1.1\r\n\r\n".to_vec(), Want::Gateway(400, "bad_request")),
        case("two Host headers", &good,
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nHost: other.example\r\n\r\n").into_bytes(),
            Want::Parser(400)),
        case("absolute-form URI whose host differs from Host", &good,
            format!("GET https://other.example/ HTTP/1.1\r\nHost: {HOST}\r\n\r\n").into_bytes(),
            Want::Parser(400)),
        case("Host with userinfo", &good, get("user@podinfo.test.svc.cluster.local:9898"),
            Want::Parser(400)),
        case("Host that is an IPv4 literal", &good, get("127.0.0.1:4143"),
            Want::Gateway(400, "bad_request")),
        case("Host that is an IPv6 literal", &good, get("[::1]:4143"),
            Want::Gateway(400, "bad_request")),
        case("Host naming a Service that is not exported", &good,
            get("internal.test.svc.cluster.local:8080"), Want::Gateway(404, "no_route")),
        case("Host kubernetes.default.svc.cluster.local", &good,
            get("kubernetes.default.svc.cluster.local"), Want::Gateway(404, "no_route")),
        case("Host kubernetes.default.svc.cluster.local:443", &good,
            get("kubernetes.default.svc.cluster.local:443"), Want::Gateway(404, "no_route")),
        case("Host outside the cluster domain", &good, get("example.com"),
            Want::Gateway(404, "no_route")),
        // Loops and limits.
        case("request already forwarded by this gateway", &good,
            get_with(&format!("Forwarded: by=\"{GATEWAY_IDENTITY}\"\r\n")),
            Want::Gateway(508, "loop")),
        case("loop marker after another hop", &good,
            get_with(&format!("Forwarded: for=10.0.0.1;by=\"spiffe://west.example/gw\", by={GATEWAY_IDENTITY}\r\n")),
            Want::Gateway(508, "loop")),
        case("oversized header section (40 KiB > 32 KiB)", &good,
            get_with(&format!("x-big: {}\r\n", "a".repeat(40 * 1024))),
            Want::Gateway(431, "headers_too_large")),
        case("too many headers (150 > 100)", &good, get_with(&many_headers),
            Want::Gateway(431, "headers_too_large")),
        case("more headers than the parser holds (300)", &good, get_with(&too_many_for_parser),
            Want::Parser(400)),
        // Bytes in header values.
        case("control byte in a header value", &good, get_with("x-ctl: a\x01b\r\n"),
            Want::Parser(400)),
        case("NUL in a header value", &good, get_with("x-nul: a\0b\r\n"), Want::Parser(400)),
        case("DEL in a header value", &good, get_with("x-del: a\x7fb\r\n"), Want::Parser(400)),
        case("invalid UTF-8 in Host", &good, non_utf8_host, Want::Gateway(400, "bad_request")),
        // obs-text (bytes 0x80-0xFF) is allowed in field values and opaque (RFC 9110 §5.5):
        // forwarded as is, never read as UTF-8 by the gateway.
        case("invalid UTF-8 (obs-text) in another header value", &good,
            b"GET / HTTP/1.1\r\nHost: podinfo.test.svc.cluster.local:9898\r\nx-latin1: caf\xe9\r\nConnection: close\r\n\r\n".to_vec(),
            Want::Upstream),
    ]
}

/// Every counter a row may move, with what it must read now.
#[derive(Default)]
struct Expected(BTreeMap<String, f64>);

impl Expected {
    fn request_error(reason: &str) -> String {
        format!("isthmus_request_errors_total{{reason=\"{reason}\"}}")
    }

    fn handshake_failure(reason: &str) -> String {
        format!("isthmus_tls_handshake_failures_total{{reason=\"{reason}\"}}")
    }

    fn all_samples() -> Vec<String> {
        let errors = [
            "bad_request",
            "unparsable_request",
            "headers_too_large",
            "loop",
            "no_route",
            "forbidden",
            "no_endpoints",
            "upstream_connect",
            "upstream_error",
            "upstream_timeout",
            "internal",
        ];
        let handshakes = [
            "no_client_cert",
            "unknown_ca",
            "expired",
            "bad_certificate",
            "bad_identity",
            "protocol",
            "timeout",
            "closed",
        ];
        errors
            .iter()
            .map(|r| Expected::request_error(r))
            .chain(handshakes.iter().map(|r| Expected::handshake_failure(r)))
            .collect()
    }

    fn bump(&mut self, sample: String) {
        *self.0.entry(sample).or_default() += 1.0;
    }

    /// Waits until every counter reads what the rows so far add up to: the row's
    /// own counter moved by one, and nothing else moved.
    async fn check(&self, h: &Harness) {
        for sample in Expected::all_samples() {
            h.wait_metric_or_absent(&sample, self.0.get(&sample).copied().unwrap_or(0.0))
                .await;
        }
    }
}

fn describe(x: &RawExchange) -> String {
    let text = x.text();
    let shown: String = text.chars().take(400).collect();
    format!("closed={} {shown:?}", x.closed)
}

async fn run(h: &Harness, case: &Case, expected: &mut Expected) {
    let name = case.name;
    let answer = case.client.raw_exchange(&case.request, WAIT).await;
    match case.want {
        Want::Refused(alert, reason) => {
            let err = match answer {
                Err(e) => e,
                Ok(x) => panic!("{name}: want a refused handshake, got {}", describe(&x)),
            };
            assert_eq!(err.alert(), Some(alert), "{name}: {err}");
            expected.bump(Expected::handshake_failure(reason));
        }
        Want::Gateway(..) | Want::Parser(_) | Want::Upstream => {
            let x = answer.unwrap_or_else(|e| panic!("{name}: want an HTTP answer, got {e}"));
            let responses = x.responses();
            assert_eq!(
                responses.len(),
                1,
                "{name}: want exactly one response: {}",
                describe(&x)
            );
            assert!(
                x.closed,
                "{name}: the connection must be closed after the answer: {}",
                describe(&x)
            );
            let (status, head, body) = &responses[0];
            let body = String::from_utf8_lossy(body);
            let error_header = head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("x-isthmus-error")
                    .then(|| v.trim().to_string())
            });
            match case.want {
                Want::Gateway(want, reason) => {
                    assert_eq!(*status, want, "{name}: {}", describe(&x));
                    assert_eq!(error_header.as_deref(), Some(reason), "{name}: {head}");
                    expected.bump(Expected::request_error(reason));
                }
                Want::Parser(want) => {
                    assert_eq!(*status, want, "{name}: {}", describe(&x));
                    assert_eq!(error_header, None, "{name}: {head}");
                    expected.bump(Expected::request_error("unparsable_request"));
                }
                Want::Upstream => {
                    assert_eq!(*status, 200, "{name}: {}", describe(&x));
                    assert!(body.contains("greetings from podinfo"), "{name}: {body}");
                }
                Want::Refused(..) => unreachable!(),
            }
        }
    }
    expected.check(h).await;
    let after = h
        .client("peer-west")
        .get(HOST, "/")
        .await
        .unwrap_or_else(|e| panic!("after {name}: a good client must still get through: {e}"));
    assert_eq!(after.status, 200, "after {name}: {}", after.body);
}

#[tokio::test]
async fn bad_input_table() {
    let podinfo = Upstream::start("podinfo").await;
    let h = Harness::start(&[
        (
            "podinfo.yaml",
            exported_service("test", "podinfo", 9898, podinfo.addr),
        ),
        (
            "internal.yaml",
            format!(
                "{}---\n{}",
                service("test", "internal", false, 8080),
                slice("test", "internal-1", "internal", podinfo.addr, true)
            ),
        ),
    ])
    .await;
    let mut expected = Expected::default();
    expected.check(&h).await;
    let mut failures = Vec::new();
    for case in cases(&h) {
        let one = std::panic::AssertUnwindSafe(run(&h, &case, &mut expected));
        if let Err(p) = futures::FutureExt::catch_unwind(one).await {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {msg}", case.name));
            // Count from what the gateway reports, so later rows are judged on their own.
            for sample in Expected::all_samples() {
                let now = h.metric_or_absent(&sample).await;
                expected.0.insert(sample, now);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
