//! Unit tests of the path normaliser.

use super::{normalize_path, PathError};

fn norm(p: &str) -> String {
    normalize_path(p).expect("accepted").into_owned()
}

#[test]
fn normal_paths_are_borrowed() {
    for p in ["/", "/a", "/a/b/", "/a.b/c..d/.e", "*"] {
        assert!(
            matches!(normalize_path(p), Ok(std::borrow::Cow::Borrowed(_))),
            "{p}"
        );
    }
}

#[test]
fn dot_segments_and_slashes() {
    for (raw, want) in [
        ("/public/../admin", "/admin"),
        ("//admin", "/admin"),
        ("/a//b///c", "/a/b/c"),
        ("/a/./b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/..", "/"),
        ("/../../x", "/x"),
        ("/a/", "/a/"),
        ("//", "/"),
        ("/a/..//b", "/b"),
    ] {
        assert_eq!(norm(raw), want, "{raw}");
    }
}

#[test]
fn percent_decoding_of_unreserved_only() {
    for (raw, want) in [
        ("/%61dmin", "/admin"),
        ("/%2e%2E/admin", "/admin"),
        ("/public/%2e%2e/admin", "/admin"),
        ("/%7efoo", "/~foo"),
        ("/a%2cb", "/a%2Cb"),
        ("/%E2%82%AC", "/%E2%82%AC"),
        ("/caf%c3%a9", "/caf%C3%A9"),
    ] {
        assert_eq!(norm(raw), want, "{raw}");
    }
}

#[test]
fn refused() {
    for (raw, why) in [
        ("/a%2Fb", PathError::EncodedSeparator),
        ("/a%2fb", PathError::EncodedSeparator),
        ("/a%5Cb", PathError::EncodedSeparator),
        ("/a%5cb", PathError::EncodedSeparator),
        ("/a%00b", PathError::Nul),
        ("/a\\b", PathError::Backslash),
        ("/a%zz", PathError::BadEscape),
        ("/a%2", PathError::BadEscape),
        ("/a%", PathError::BadEscape),
    ] {
        assert_eq!(normalize_path(raw), Err(why), "{raw}");
    }
}
