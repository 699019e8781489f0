//! TLS record counter for the harness's `--counts` mode: a TCP relay between
//! the load generator and a system under test that forwards bytes unchanged
//! and follows the TLS record framing (5-byte header: content type, version,
//! 16-bit length) in both directions. Records do not depend on how the bytes
//! are cut into TCP segments or syscalls, so the counts are the system's own
//! TLS writes (one record per rustls/OpenSSL write of application data), not
//! an artefact of the relay. Also counts the relay's reads per direction
//! (an upper bound on the segments the system's writes arrived in).
//!
//! On SIGTERM prints one JSON object with the totals and exits.
//!
//! Usage: `tls-records LISTEN TARGET`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{tcp, TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

/// Totals for one direction.
#[derive(Default)]
struct Direction {
    /// Records by content type: change_cipher_spec, alert, handshake, application_data.
    records: [AtomicU64; 4],
    bytes: AtomicU64,
    reads: AtomicU64,
}

#[derive(Default)]
struct Totals {
    connections: AtomicU64,
    /// Server (system under test) to client.
    down: Direction,
    /// Client to server.
    up: Direction,
}

/// Where a direction's parser stands in the record stream.
#[derive(Default)]
struct Framing {
    header: [u8; 5],
    have: usize,
    /// Payload bytes still to skip of the current record.
    skip: usize,
}

impl Framing {
    /// Consumes `buf`, counting each record header completed in it.
    fn feed(&mut self, mut buf: &[u8], dir: &Direction) {
        while !buf.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(buf.len());
                self.skip -= n;
                buf = &buf[n..];
                continue;
            }
            let n = (5 - self.have).min(buf.len());
            self.header[self.have..self.have + n].copy_from_slice(&buf[..n]);
            self.have += n;
            buf = &buf[n..];
            if self.have == 5 {
                let kind = self.header[0].wrapping_sub(20) as usize;
                if let Some(c) = dir.records.get(kind) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                self.skip = u16::from_be_bytes([self.header[3], self.header[4]]) as usize;
                self.have = 0;
            }
        }
    }
}

async fn pump(mut from: tcp::OwnedReadHalf, mut to: tcp::OwnedWriteHalf, dir: &Direction) {
    let mut framing = Framing::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        dir.reads.fetch_add(1, Ordering::Relaxed);
        dir.bytes.fetch_add(n as u64, Ordering::Relaxed);
        framing.feed(&buf[..n], dir);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

async fn relay(client: TcpStream, target: SocketAddr, totals: Arc<Totals>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    totals.connections.fetch_add(1, Ordering::Relaxed);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::join!(pump(cr, sw, &totals.up), pump(sr, cw, &totals.down));
}

fn json(d: &Direction) -> serde_json::Value {
    let r = |i: usize| d.records[i].load(Ordering::Relaxed);
    serde_json::json!({
        "application_data": r(3),
        "handshake": r(2),
        "alert": r(1),
        "change_cipher_spec": r(0),
        "bytes": d.bytes.load(Ordering::Relaxed),
        "reads": d.reads.load(Ordering::Relaxed),
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, target] = args.as_slice() else {
        return Err("usage: tls-records LISTEN TARGET".into());
    };
    let target: SocketAddr = target.parse()?;
    let listener = TcpListener::bind(listen.as_str()).await?;
    let totals = Arc::new(Totals::default());
    let mut term = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    tokio::spawn(relay(client, target, totals.clone()));
                }
            }
            _ = term.recv() => break,
        }
    }
    let out = serde_json::json!({
        "connections": totals.connections.load(Ordering::Relaxed),
        "server_to_client": json(&totals.down),
        "client_to_server": json(&totals.up),
    });
    println!("{out}");
    Ok(())
}
