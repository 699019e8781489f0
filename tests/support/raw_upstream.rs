//! A scripted upstream: each connection the gateway opens is handed to the
//! test as a plain TCP stream, to read the request and write any bytes back.

use std::net::SocketAddr;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// An upstream whose connections the test answers by hand.
pub struct RawUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    conns: mpsc::UnboundedReceiver<TcpStream>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    /// Listens on `127.0.0.1:0`.
    pub async fn start() -> RawUpstream {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = l.local_addr().expect("local addr");
        let (tx, conns) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                if tx.send(s).is_err() {
                    break;
                }
            }
        });
        RawUpstream { addr, conns, task }
    }

    /// The next connection from the gateway.
    pub async fn accept(&mut self) -> TcpStream {
        self.conns.recv().await.expect("upstream listener running")
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request as the upstream received it.
#[derive(Debug)]
pub struct RawRequest {
    /// The request line and header lines, as received (up to the empty line).
    pub head: String,
    /// The body (by `Content-Length`; none otherwise).
    pub body: Vec<u8>,
}

impl RawRequest {
    /// The request line's target.
    pub fn path(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }
}

/// Reads one request (header section, then a `Content-Length` body).
pub async fn read_request(s: &mut TcpStream) -> std::io::Result<RawRequest> {
    let mut buf = Vec::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        if s.read_buf(&mut body).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    body.truncate(len);
    Ok(RawRequest { head, body })
}
