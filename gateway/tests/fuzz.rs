//! Fuzz targets for the parsers that read untrusted bytes, run by `cargo test`
//! as bounded loops: the request authority, the request path, the HTTP/1
//! framing checks and the manifest decoder.
//!
//! Each target first runs every seed of its checked-in corpus
//! (`gateway/fuzz/corpus/<target>/`, one input per file), then generated
//! inputs: arbitrary bytes, and corpus seeds mutated byte-wise and with
//! tokens that matter to the parser (`%2e`, `//`, `\n`, `@`, `[`,
//! `Transfer-Encoding`, ...). A failure is shrunk and reported with the input,
//! ready to be added to the corpus.
//!
//! Budget per target: `ISTHMUS_FUZZ_ITERATIONS` generated inputs (default
//! 2,000) or `ISTHMUS_FUZZ_SECONDS` (default 5), whichever ends first;
//! `.ci/fuzz` runs longer. `ISTHMUS_FUZZ_SEED` fixes the generator's seed.
//!
//! Properties: nothing panics; an accepted authority re-parses to itself; a
//! normalised path is a fixed point of normalisation; the framing check
//! refuses exactly bare LFs and Content-Length next to Transfer-Encoding.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use isthmus::discovery::files::parse_manifests;
use isthmus::proxy::request::check_framing;
use isthmus::routes::{normalize_path, Authority};
use pingora_http::RequestHeader;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Tokens spliced into seeds: what the parsers treat specially.
const TOKENS: &[&[u8]] = &[
    b"%2e",
    b"%2E%2e",
    b"%2f",
    b"%5C",
    b"%00",
    b"%",
    b"..",
    b".",
    b"/",
    b"//",
    b"\\",
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b"@",
    b"[",
    b"]",
    b"::1",
    b"-",
    b" ",
    b"\t",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 0\r\n",
    b"content-length",
    b"Host: a.example\r\n",
    b"\r\n\r\n",
    b"---\n",
    b"{",
    b"}",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"\xff",
    b"\xc3\xa9",
];

#[derive(Clone, Debug)]
enum Edit {
    Insert(Index, u8),
    Replace(Index, u8),
    Delete(Index),
    Token(Index, Index),
    Duplicate(Index, Index),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Replace(i, b)),
        any::<Index>().prop_map(Edit::Delete),
        (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Edit::Token(i, t)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::Duplicate(a, b)),
        any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for e in edits {
        let at = |i: &Index, len: usize| i.index(len + 1);
        match e {
            Edit::Insert(i, b) => {
                let p = at(i, v.len());
                v.insert(p, *b);
            }
            Edit::Replace(i, b) if !v.is_empty() => {
                let p = i.index(v.len());
                v[p] = *b;
            }
            Edit::Delete(i) if !v.is_empty() => {
                let p = i.index(v.len());
                v.remove(p);
            }
            Edit::Token(i, t) => {
                let p = at(i, v.len());
                let tok = TOKENS[t.index(TOKENS.len())];
                v.splice(p..p, tok.iter().copied());
            }
            Edit::Duplicate(a, b) if !v.is_empty() => {
                let (x, y) = (a.index(v.len()), b.index(v.len()));
                let (lo, hi) = (x.min(y), x.max(y) + 1);
                let part = v[lo..hi.min(lo + 64)].to_vec();
                v.splice(hi..hi, part);
            }
            Edit::Truncate(i) => {
                let p = at(i, v.len());
                v.truncate(p);
            }
            _ => {}
        }
    }
    v
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("corpus entry").path();
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            (name, std::fs::read(&path).expect("read corpus file"))
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "empty corpus {}", dir.display());
    seeds
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fails(check: &dyn Fn(&[u8]), input: &[u8]) -> Option<String> {
    catch_unwind(AssertUnwindSafe(|| check(input)))
        .err()
        .map(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into())
        })
}

/// Runs `check` on every corpus seed of `target`, then on generated inputs
/// within the budget; panics with the (shrunk) input of the first failure.
fn fuzz(target: &str, check: impl Fn(&[u8])) {
    let check: &dyn Fn(&[u8]) = &check;
    let seeds = corpus(target);
    for (name, input) in &seeds {
        if let Some(msg) = fails(check, input) {
            panic!(
                "{target}: corpus seed {name} ({:?}) fails: {msg}",
                input.escape_ascii().to_string()
            );
        }
    }
    let iterations: u64 = env_or("ISTHMUS_FUZZ_ITERATIONS", 2_000);
    let budget = Duration::from_secs_f64(env_or("ISTHMUS_FUZZ_SECONDS", 5.0));
    let seed: u64 = env_or("ISTHMUS_FUZZ_SEED", fastrand_seed());
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config {
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let inputs: Vec<Vec<u8>> = seeds.into_iter().map(|(_, v)| v).collect();
    let strategy = prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        3 => (
            prop::sample::select(inputs),
            prop::collection::vec(edit(), 1..8)
        )
            .prop_map(|(s, edits)| mutate(&s, &edits)),
    ];
    let started = Instant::now();
    let mut ran = 0u64;
    while ran < iterations && started.elapsed() < budget {
        ran += 1;
        let mut tree = strategy.new_tree(&mut runner).expect("generate");
        let Some(mut msg) = fails(check, &tree.current()) else {
            continue;
        };
        // Shrink: keep the simplest input that still fails.
        let mut minimal = tree.current();
        for _ in 0..10_000 {
            if !tree.simplify() {
                break;
            }
            match fails(check, &tree.current()) {
                Some(m) => {
                    minimal = tree.current();
                    msg = m;
                }
                None => {
                    if !tree.complicate() {
                        break;
                    }
                }
            }
        }
        panic!(
            "{target}: input {:?} fails (ISTHMUS_FUZZ_SEED={seed}, case {ran}): {msg}\n\
             add it to gateway/fuzz/corpus/{target}/ once fixed",
            minimal.escape_ascii().to_string()
        );
    }
    eprintln!(
        "fuzz {target}: corpus + {ran} generated inputs in {:.1?} (ISTHMUS_FUZZ_SEED={seed})",
        started.elapsed()
    );
}

fn fastrand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Targets

fn check_authority(raw: &[u8]) {
    let Ok(a) = Authority::parse(raw) else {
        return;
    };
    let shown = a.to_string();
    let again = Authority::parse(shown.as_bytes())
        .unwrap_or_else(|e| panic!("accepted {a:?} shown as {shown:?} does not re-parse: {e}"));
    assert_eq!(again, a, "re-parse of {shown:?}");
    assert_eq!(again.to_string(), shown);
    let host = a.host();
    assert!(!host.is_empty() && host.len() <= 253, "{host:?}");
    assert!(!host.ends_with('.'), "{host:?}");
    assert!(
        host.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
        "{host:?}"
    );
    assert_ne!(a.port(), Some(0));
    assert!(!raw.contains(&b'@'), "userinfo accepted: {raw:?}");
    assert!(raw.first() != Some(&b'['), "IP literal accepted: {raw:?}");
}

#[test]
fn fuzz_authority_parse() {
    fuzz("authority", check_authority);
}

fn check_path(raw: &[u8]) {
    let path = String::from_utf8_lossy(raw);
    let Ok(normal) = normalize_path(&path) else {
        return;
    };
    let again = normalize_path(&normal)
        .unwrap_or_else(|e| panic!("{path:?} normalised to {normal:?}, which is refused: {e}"));
    assert_eq!(again, normal, "normalise is not idempotent on {path:?}");
    if path.starts_with('/') {
        assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
        assert!(!normal.contains("//"), "{path:?} -> {normal:?}");
        assert!(!normal.contains('\\'), "{path:?} -> {normal:?}");
        for seg in normal.split('/') {
            assert!(
                seg != "." && seg != "..",
                "dot segment in {normal:?} from {path:?}"
            );
        }
        let lower = normal.to_ascii_lowercase();
        for hidden in ["%2e", "%2f", "%5c", "%00"] {
            assert!(
                !lower.contains(hidden),
                "{hidden} left in {normal:?} from {path:?}"
            );
        }
    }
}

#[test]
fn fuzz_normalize_path() {
    fuzz("path", check_path);
}

/// Whether a line ends in LF without CR before it.
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// The framing check on a head parsed the way pingora parses it (httparse),
/// against an oracle; and the raw-head checks alone on any bytes.
fn check_raw_framing(raw: &[u8]) {
    // Raw-head checks alone: any bytes, a request with no headers.
    let bare = RequestHeader::build("GET", b"/", None).expect("request");
    let alone = check_framing(raw, &bare);
    assert_eq!(
        alone.is_err(),
        has_bare_lf(raw),
        "raw-head check on {:?}: {alone:?}",
        raw.escape_ascii().to_string()
    );

    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = parsed.parse(raw) else {
        return;
    };
    let head = &raw[..len];
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return;
    };
    let Ok(mut req) = RequestHeader::build(method, path.as_bytes(), None) else {
        return;
    };
    for h in parsed.headers.iter() {
        if req.append_header(h.name.to_string(), h.value).is_err() {
            return;
        }
    }
    let te = parsed
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let cl = parsed
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("content-length"));
    let got = check_framing(head, &req);
    let want_refused = has_bare_lf(head) || (te && cl);
    assert_eq!(
        got.is_err(),
        want_refused,
        "framing of {:?} (te={te}, cl={cl}): {got:?}",
        head.escape_ascii().to_string()
    );
}

#[test]
fn fuzz_check_framing() {
    fuzz("framing", check_raw_framing);
}

fn check_manifests(raw: &[u8]) {
    let text = String::from_utf8_lossy(raw);
    if let Ok(objects) = parse_manifests(&text) {
        for o in &objects {
            assert!(
                !o.key().name.is_empty(),
                "unnamed object accepted: {text:?}"
            );
        }
        let again = parse_manifests(&text).expect("same text, same answer");
        assert_eq!(again.len(), objects.len());
    }
}

#[test]
fn fuzz_parse_manifests() {
    fuzz("manifests", check_manifests);
}
