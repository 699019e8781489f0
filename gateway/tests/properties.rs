//! Property tests for the parsers that read untrusted or hand-written
//! text: the request authority (Host / `:authority`), the request path, the
//! config file, and the manifest files of the file source. None may panic on any input; what they
//! accept is normalised, and what they refuse says why (and where).
//!
//! Case counts are bounded so the file runs in seconds in debug builds;
//! `PROPTEST_CASES` overrides them (e.g. `PROPTEST_CASES=20000` for a long run).

use std::path::Path;

use isthmus::config::Config;
use isthmus::discovery::files::{parse_manifests, FileSource};
use isthmus::routes::{normalize_path, Authority, AuthorityError, PathError};
use proptest::prelude::*;
use proptest::sample::Index;

/// `cases` unless `PROPTEST_CASES` says otherwise; no regression files in the tree.
fn config(cases: u32) -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = cases;
    }
    c.failure_persistence = None;
    c
}

// ---------------------------------------------------------------------------
// Authority

/// One RFC 1123 label in mixed case: alphanumerics and '-', not at either end, 1..=63.
fn label() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
}

/// A DNS name the gateway must accept: 1..=5 labels, at most 253 characters,
/// not all labels numeric (that would be an IP literal).
fn dns_name() -> impl Strategy<Value = String> {
    prop::collection::vec(label(), 1..=5)
        .prop_map(|labels| labels.join("."))
        .prop_filter("at most 253 characters", |n| n.len() <= 253)
        .prop_filter("not all-numeric", |n| {
            !n.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// A valid-looking Host: a DNS name, maybe a trailing dot, maybe a port.
fn host() -> impl Strategy<Value = (String, bool, Option<u16>)> {
    (dns_name(), any::<bool>(), prop::option::of(1u16..))
}

fn render(name: &str, dot: bool, port: Option<u16>) -> String {
    let dot = if dot { "." } else { "" };
    match port {
        Some(p) => format!("{name}{dot}:{p}"),
        None => format!("{name}{dot}"),
    }
}

/// What every accepted authority must satisfy, whatever the input was.
fn assert_normalised(a: &Authority, input: &[u8]) {
    let host = a.host();
    assert!(!host.is_empty(), "{}", input.escape_ascii());
    assert!(
        !host.ends_with('.'),
        "{host:?} from {}",
        input.escape_ascii()
    );
    assert!(
        host.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'),
        "{host:?} from {}",
        input.escape_ascii()
    );
    assert_ne!(a.port(), Some(0));
    let again = Authority::parse(a.to_string().as_bytes()).unwrap_or_else(|e| {
        panic!(
            "{a} (from {}) does not parse again: {e}",
            input.escape_ascii()
        )
    });
    assert_eq!(&again, a, "parsing the normalised form changes it");
    let host_only = Authority::parse(host.as_bytes()).expect("the host alone parses");
    assert_eq!(host_only.host(), host);
}

/// Bytes that look like a Host, then get damaged: the inputs most likely to reach
/// the parser's corners (edges of labels, ports, dots).
fn damaged_host() -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<Index>(), any::<u8>(), 0u8..3);
    (host(), prop::collection::vec(edit, 1..4)).prop_map(|((name, dot, port), edits)| {
        let mut raw = render(&name, dot, port).into_bytes();
        for (at, byte, op) in edits {
            let i = at.index(raw.len() + 1);
            match op {
                0 => raw.insert(i, byte),
                1 if i < raw.len() => raw[i] = byte,
                _ if i < raw.len() => {
                    raw.remove(i);
                }
                _ => raw.push(byte),
            }
        }
        raw
    })
}

/// Bytes drawn mostly from the Host alphabet and its separators.
fn host_alphabet_bytes() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        4 => prop::sample::select(b"aZ09-.:@[]".to_vec()),
        1 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..40)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn authority_never_panics_and_what_it_accepts_is_normalised(
        raw in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            host_alphabet_bytes(),
            damaged_host(),
        ]
    ) {
        if let Ok(a) = Authority::parse(&raw) {
            assert_normalised(&a, &raw);
        }
    }

    #[test]
    fn valid_hosts_parse_to_their_lower_case_form((name, dot, port) in host()) {
        let raw = render(&name, dot, port);
        let a = Authority::parse(raw.as_bytes())
            .unwrap_or_else(|e| panic!("{raw:?} refused: {e}"));
        prop_assert_eq!(a.host(), name.to_ascii_lowercase());
        prop_assert_eq!(a.port(), port);
        assert_normalised(&a, raw.as_bytes());
    }

    #[test]
    fn ports_past_65535_or_zero_are_refused(
        (name, dot, _) in host(),
        port in prop_oneof![65536u64..=99_999, 100_000u64.., Just(0u64)],
        zeros in 0usize..3,
    ) {
        let raw = format!("{}:{}{port}", render(&name, dot, None), "0".repeat(zeros));
        prop_assert_eq!(Authority::parse(raw.as_bytes()), Err(AuthorityError::BadPort), "{}", raw);
    }

    #[test]
    fn an_empty_host_is_refused(port in prop::option::of(any::<u16>()), dot in any::<bool>()) {
        let raw = render("", dot, port);
        prop_assert!(Authority::parse(raw.as_bytes()).is_err(), "{:?} accepted", raw);
    }

    #[test]
    fn userinfo_is_refused(
        user in "[a-zA-Z0-9._~:%!$&'()*+,;=-]{0,20}",
        (name, dot, port) in host(),
    ) {
        let raw = format!("{user}@{}", render(&name, dot, port));
        prop_assert_eq!(Authority::parse(raw.as_bytes()), Err(AuthorityError::Userinfo), "{}", raw);
    }

    #[test]
    fn non_ascii_is_refused(
        (name, dot, port) in host(),
        at in any::<Index>(),
        c in any::<char>().prop_filter("non-ASCII", |c| !c.is_ascii()),
    ) {
        let mut raw = render(&name, dot, port);
        raw.insert(at.index(raw.len() + 1), c); // `raw` is ASCII: every index is a boundary
        prop_assert_eq!(Authority::parse(raw.as_bytes()), Err(AuthorityError::NotAscii), "{}", raw);
    }

    #[test]
    fn all_numeric_names_are_ip_literals(
        labels in prop::collection::vec("[0-9]{1,3}", 1..=4),
        port in prop::option::of(1u16..),
    ) {
        let raw = render(&labels.join("."), false, port);
        prop_assert_eq!(Authority::parse(raw.as_bytes()), Err(AuthorityError::IpLiteral), "{}", raw);
    }
}

// ---------------------------------------------------------------------------
// Text mutations shared by the config and manifest properties

/// One edit of a text, applied on char boundaries so the result stays a `&str`.
#[derive(Clone, Debug)]
enum Edit {
    Insert(Index, String),
    Delete(Index, usize),
    ReplaceChar(Index, char),
    /// Replaces the value of the n-th `key: value` line.
    ReplaceValue(Index, String),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    Truncate(Index),
}

/// Scalars and collections that a field may wrongly (or rightly) hold.
#[rustfmt::skip]
const VALUES: &[&str] = &[
    "", "\"\"", "null", "~", "0", "-1", "1", "1023", "1024", "65536", "18446744073709551616",
    "1.5", "true", "x", ".", ".cluster.local", "cluster.local.", "\"*\"", "\"a*b\"", "\"*a*\"",
    "\"spiffe://west.example/*\"", "[]", "{}", "[a, b]", "{a: b}", "\"0.0.0.0:0\"",
    "\"[::1]:4143\"", "\"host:port\"", "/abs/path", "\"\\u0000\"", "|\n  block\n",
];

/// Fragments that mean something to YAML or to the schemas.
#[rustfmt::skip]
const TOKENS: &[&str] = &[
    ":", ": ", "- ", "-", "{", "}", "[", "]", ",", "\"", "'", "#", "&a ", "*a", "<<: *a",
    "!!binary ", "!tag ", "? ", "|", ">", "---\n", "...\n", "%YAML 1.2\n", "\t", "  ", "\n",
    "\r\n", "~", "null", "true", "0x1F", "1e400", "-1", "99999999999999999999", ".inf", "\\u0000",
    "\0", "\u{feff}", "é", "*", "spiffe://*/*", "apiVersion: v1\n", "kind: Service\n",
    "kind: Mapping\n", "apiVersion: isthmus.dev/v1alpha1\n", "metadata:\n", "name: ",
];

fn edit() -> impl Strategy<Value = Edit> {
    let fragment = prop_oneof![
        3 => prop::sample::select(TOKENS).prop_map(str::to_string),
        1 => ".{0,12}",
    ];
    prop_oneof![
        4 => (any::<Index>(), fragment).prop_map(|(i, s)| Edit::Insert(i, s)),
        3 => (any::<Index>(), 1usize..20).prop_map(|(i, n)| Edit::Delete(i, n)),
        2 => (any::<Index>(), any::<char>()).prop_map(|(i, c)| Edit::ReplaceChar(i, c)),
        3 => (any::<Index>(), prop::sample::select(VALUES)).prop_map(|(i, v)| Edit::ReplaceValue(i, v.to_string())),
        1 => any::<Index>().prop_map(Edit::DuplicateLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

fn boundary(text: &str, at: &Index) -> usize {
    let mut i = at.index(text.len() + 1);
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut t = text.to_string();
    for e in edits {
        match e {
            Edit::Insert(at, s) => {
                let i = boundary(&t, at);
                t.insert_str(i, s);
            }
            Edit::Delete(at, n) => {
                let i = boundary(&t, at);
                let end = t[i..]
                    .char_indices()
                    .nth(*n)
                    .map_or(t.len(), |(j, _)| i + j);
                t.replace_range(i..end, "");
            }
            Edit::ReplaceChar(at, c) => {
                let i = boundary(&t, at);
                if let Some(old) = t[i..].chars().next() {
                    t.replace_range(i..i + old.len_utf8(), c.encode_utf8(&mut [0; 4]));
                }
            }
            Edit::ReplaceValue(at, value) => {
                let mut lines: Vec<String> = t.split_inclusive('\n').map(str::to_string).collect();
                let keyed: Vec<usize> = (0..lines.len())
                    .filter(|i| lines[*i].contains(": "))
                    .collect();
                if keyed.is_empty() {
                    continue;
                }
                let line = &mut lines[keyed[at.index(keyed.len())]];
                if let Some(colon) = line.find(": ") {
                    line.replace_range(colon + 2.., &format!("{value}\n"));
                }
                t = lines.concat();
            }
            Edit::DuplicateLine(_) | Edit::SwapLines(..) if t.is_empty() => {}
            Edit::DuplicateLine(at) => {
                let mut lines: Vec<&str> = t.split_inclusive('\n').collect();
                let i = at.index(lines.len());
                lines.insert(i, lines[i]);
                t = lines.concat();
            }
            Edit::SwapLines(a, b) => {
                let mut lines: Vec<&str> = t.split_inclusive('\n').collect();
                let (a, b) = (a.index(lines.len()), b.index(lines.len()));
                lines.swap(a, b);
                t = lines.concat();
            }
            Edit::Truncate(at) => {
                let i = boundary(&t, at);
                t.truncate(i);
            }
        }
    }
    t
}

/// Any string, weighted towards YAML-looking ones.
fn yamlish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(TOKENS).prop_map(str::to_string),
                1 => "[a-z_]{1,10}",
                1 => ".{0,6}",
            ],
            0..60
        )
        .prop_map(|parts| parts.concat()),
    ]
}

fn example(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// Config

const CONFIG_PATH: &str = "/etc/isthmus/isthmus.yaml";

/// Parses config text; an error must be a non-empty message naming the file.
fn check_config(text: &str) {
    let path = Path::new(CONFIG_PATH);
    if let Err(e) = Config::parse(text, path, Path::new("/etc/isthmus")) {
        let msg = e.to_string();
        assert!(
            msg.contains(CONFIG_PATH),
            "the error does not name the file: {msg:?}"
        );
        assert!(
            msg.len() > CONFIG_PATH.len() + "invalid config file : ".len(),
            "the error gives no reason: {msg:?}"
        );
    }
}

#[test]
fn the_example_config_parses() {
    let text = example("isthmus.yaml");
    Config::parse(&text, Path::new(CONFIG_PATH), Path::new("/etc/isthmus"))
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn deeply_nested_or_aliased_config_is_an_error_not_a_crash() {
    let deep = format!("listen: {}{}", "[".repeat(10_000), "]".repeat(10_000));
    check_config(&deep);
    let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..9u8 {
        let (prev, next) = ((b'a' + i) as char, (b'b' + i) as char);
        laughs.push_str(&format!(
            "{next}: &{next} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        ));
    }
    laughs.push_str("tls: *j\n");
    check_config(&laughs);
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn config_parse_never_panics_on_any_text(text in yamlish()) {
        check_config(&text);
    }

    #[test]
    fn config_parse_never_panics_on_an_edited_example(
        edits in prop::collection::vec(edit(), 1..5)
    ) {
        check_config(&apply(&example("isthmus.yaml"), &edits));
    }
}

// ---------------------------------------------------------------------------
// Manifests

const MANIFESTS: &[&str] = &[
    "manifests/podinfo.yaml",
    "manifests/internal.yaml",
    "manifests/mapping.yaml",
];

fn all_manifests() -> String {
    MANIFESTS
        .iter()
        .map(|m| example(m))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Parses manifest text; an error must be non-empty and name the document.
fn check_manifests(text: &str) -> Result<(), String> {
    parse_manifests(text).map(|_| ()).inspect_err(|e| {
        assert!(
            e.starts_with("document ") && e.len() > "document 1: ".len(),
            "the error does not name the document and a reason: {e:?}"
        );
    })
}

#[test]
fn the_example_manifests_parse() {
    for m in MANIFESTS {
        let objects = parse_manifests(&example(m)).unwrap_or_else(|e| panic!("{m}: {e}"));
        assert!(!objects.is_empty(), "{m}");
    }
    assert_eq!(
        parse_manifests(&all_manifests()).expect("all").len(),
        5,
        "2 Services, 2 EndpointSlices, 1 Mapping"
    );
}

fn any_manifest() -> impl Strategy<Value = String> {
    let base = prop::sample::select(MANIFESTS).prop_map(example);
    prop_oneof![base, Just(all_manifests())]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn manifests_never_panic_on_any_text(text in yamlish()) {
        let _ = check_manifests(&text);
    }

    #[test]
    fn manifests_never_panic_on_edited_examples(
        text in any_manifest(),
        edits in prop::collection::vec(edit(), 1..5),
    ) {
        let _ = check_manifests(&apply(&text, &edits));
    }
}

proptest! {
    // Each case writes a file and scans it: fewer cases.
    #![proptest_config(config(48))]

    /// Through the file source, a refused file is reported with its path, and
    /// exactly when `parse_manifests` refuses its text.
    #[test]
    fn file_errors_name_the_file(
        text in any_manifest(),
        edits in prop::collection::vec(edit(), 0..5),
    ) {
        let text = apply(&text, &edits);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("sub").join("edited.yaml");
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, &text).expect("write");
        let scan = FileSource::new(dir.path()).scan().expect("the directory is readable");
        match check_manifests(&text) {
            Ok(()) => prop_assert!(scan.errors.is_empty(), "{:?}", scan.errors),
            Err(reason) => {
                prop_assert_eq!(scan.errors.len(), 1, "{:?}", scan.errors);
                let e = &scan.errors[0];
                prop_assert_eq!(&e.path, &file);
                prop_assert_eq!(e.to_string(), format!("{}: {reason}", file.display()));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Request path

/// Paths made of the pieces that matter: separators, dots, escapes (good,
/// bad, unreserved, reserved, refused), plain characters.
fn path_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["/", "//", ".", "..", "/.", "/..", "a", "b-c", "~"]).prop_map(str::to_string),
        2 => prop::sample::select(vec!["%2e", "%2E", "%61", "%7e", "%2c", "%3F", "%C3%A9", "%2f", "%5C", "%00", "%", "%g1", "\\"]).prop_map(str::to_string),
        1 => "[ -~]{1,3}",
    ]
}

fn raw_path() -> impl Strategy<Value = String> {
    prop::collection::vec(path_piece(), 0..12).prop_map(|p| format!("/{}", p.concat()))
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn normalised_paths_are_canonical_and_stable(raw in raw_path()) {
        match normalize_path(&raw) {
            Ok(p) => {
                prop_assert!(p.starts_with('/'), "{raw:?} -> {p:?}");
                prop_assert!(!p.contains("//"), "{raw:?} -> {p:?}");
                prop_assert!(!p.contains('\\'), "{raw:?} -> {p:?}");
                prop_assert!(
                    !p[1..].split('/').any(|s| s == "." || s == ".."),
                    "{raw:?} -> {p:?}"
                );
                let lower = p.to_ascii_lowercase();
                for refused in ["%2f", "%5c", "%00", "%2e", "%61", "%7e"] {
                    prop_assert!(!lower.contains(refused), "{raw:?} -> {p:?}");
                }
                // Idempotent: a normal path is its own normal form.
                let again = normalize_path(&p);
                prop_assert_eq!(again.as_deref(), Ok(&*p));
            }
            Err(e) => {
                let lower = raw.to_ascii_lowercase();
                let why = match e {
                    PathError::EncodedSeparator => lower.contains("%2f") || lower.contains("%5c"),
                    PathError::Nul => lower.contains("%00"),
                    PathError::Backslash => raw.contains('\\'),
                    PathError::BadEscape => raw.contains('%'),
                };
                prop_assert!(why, "{raw:?} refused as {e:?}");
            }
        }
    }
}
