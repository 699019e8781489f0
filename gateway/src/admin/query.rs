//! Query strings of admin requests: `a=1&b=x%20y` into decoded pairs.
//! Never fails: bad escapes are kept as written, bad UTF-8 is replaced.

/// The decoded `(name, value)` pairs of a query string, in order.
pub fn parse(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The first value of `name`.
pub fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Percent-decoding with `+` as space (HTML forms).
pub fn decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pairs_and_keeps_bad_escapes() {
        let q = parse(Some("host=a.b%3A80&path=%2Fx+y&empty=&flag&bad=%zz%4"));
        assert_eq!(get(&q, "host"), Some("a.b:80"));
        assert_eq!(get(&q, "path"), Some("/x y"));
        assert_eq!(get(&q, "empty"), Some(""));
        assert_eq!(get(&q, "flag"), Some(""));
        assert_eq!(get(&q, "bad"), Some("%zz%4"));
        assert_eq!(get(&q, "missing"), None);
        assert_eq!(decode("%ff"), "\u{fffd}");
        assert!(parse(None).is_empty());
    }
}
