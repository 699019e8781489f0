//! Response heads in the bytes pingora writes: where a head ends and its status.

/// Follows one response head across writes (pingora writes `HTTP/1.1 NNN ...`
/// lines ending in CRLF and a blank line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct ResponseHead {
    /// The first bytes: `HTTP/1.1 NNN`.
    start: [u8; 12],
    seen: usize,
    tail: [u8; 3],
}

impl ResponseHead {
    /// Feeds written bytes; when the head ends in them, how many belong to it.
    pub(super) fn feed(&mut self, data: &[u8]) -> Option<usize> {
        for (i, &b) in data.iter().enumerate() {
            if let Some(slot) = self.start.get_mut(self.seen) {
                *slot = b;
            }
            self.seen += 1;
            if b == b'\n' && self.tail == *b"\r\n\r" {
                return Some(i + 1);
            }
            self.tail = [self.tail[1], self.tail[2], b];
        }
        None
    }

    /// The status code, once its bytes were written (`None` if not a status line).
    pub(super) fn status(&self) -> Option<u16> {
        if self.seen < self.start.len() || !self.start.starts_with(b"HTTP/1.") {
            return None;
        }
        std::str::from_utf8(&self.start[9..12]).ok()?.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::ResponseHead;

    #[test]
    fn head_in_one_write_then_body() {
        let mut h = ResponseHead::default();
        let data = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(h.feed(data), Some(data.len() - 5));
        assert_eq!(h.status(), Some(200));
    }

    #[test]
    fn head_split_across_writes() {
        let mut h = ResponseHead::default();
        for part in [
            &b"HTTP/1"[..],
            b".1 10",
            b"1 Switching\r\n",
            b"upgrade: x\r\n\r",
        ] {
            assert_eq!(h.feed(part), None);
        }
        assert_eq!(h.status(), Some(101));
        assert_eq!(h.feed(b"\nrest"), Some(1));
    }

    #[test]
    fn not_a_status_line() {
        let mut h = ResponseHead::default();
        assert_eq!(h.feed(b"garbage\r\n\r\n"), Some(11));
        assert_eq!(h.status(), None);
    }
}
