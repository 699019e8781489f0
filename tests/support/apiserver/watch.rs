//! The body of a WATCH response: newline-delimited JSON events, sent chunked.
//!
//! A stream first sends its backlog (replayed history, or the current state as
//! synthetic ADDED events), then follows the live feed. It ends cleanly after
//! `timeoutSeconds`, and ends abruptly (an I/O error, so hyper closes the
//! connection without the terminating chunk) when the test drops watches, or when
//! it fell so far behind that the live feed lost events: the client then resumes
//! from the last resourceVersion it saw, and nothing is lost.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::resources::RESOURCES;
use super::selector::Selector;
use super::store::{Event, EventType, Expired, WatchStart};
use super::{Gauge, Shared};

/// Soft limit on the bytes batched into one chunk.
const CHUNK_BYTES: usize = 64 * 1024;

/// Which objects a watch sees.
#[derive(Debug, Default)]
pub(crate) struct WatchFilter {
    pub(crate) namespace: Option<String>,
    pub(crate) labels: Selector,
    pub(crate) fields: Selector,
}

impl WatchFilter {
    fn matches(&self, obj: &Value) -> bool {
        let ns = obj.pointer("/metadata/namespace").and_then(Value::as_str);
        self.namespace
            .as_deref()
            .is_none_or(|want| ns == Some(want))
            && self.labels.matches_labels(obj)
            && self.fields.matches_fields(obj)
    }

    /// How an event looks to this watch: filtered out, or its type and object. An
    /// object that stops matching is reported DELETED, one that starts matching ADDED.
    fn view<'e>(&self, event: &'e Event) -> Option<(EventType, Cow<'e, Value>)> {
        let now = self.matches(&event.object);
        let before = match (event.kind, &event.prev) {
            (EventType::Modified, Some(prev)) => Some((self.matches(prev), prev)),
            _ => None,
        };
        match before {
            None | Some((true, _)) if now => Some((event.kind, Cow::Borrowed(&*event.object))),
            Some((false, _)) if now => Some((EventType::Added, Cow::Borrowed(&*event.object))),
            Some((true, prev)) => {
                let mut gone = (**prev).clone();
                if let Some(meta) = gone.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("resourceVersion".into(), event.rv.to_string().into());
                }
                Some((EventType::Deleted, Cow::Owned(gone)))
            }
            _ => None,
        }
    }
}

/// Stream behaviour requested by the query.
#[derive(Debug, Default)]
pub(crate) struct WatchOptions {
    /// Send BOOKMARK events this often (`allowWatchBookmarks=true`).
    pub(crate) bookmarks: Option<Duration>,
    /// End the stream cleanly after this long (`timeoutSeconds`).
    pub(crate) timeout: Option<Duration>,
    /// Mark the end of the backlog with an `initial-events-end` bookmark (`sendInitialEvents=true`).
    pub(crate) initial_events_end: bool,
}

/// An open watch.
pub(crate) struct WatchStream {
    shared: Arc<Shared>,
    res: usize,
    filter: WatchFilter,
    backlog: VecDeque<Arc<Event>>,
    initial_events_end: bool,
    live: broadcast::Receiver<Arc<Event>>,
    /// The resourceVersion the client has seen everything of this resource up to.
    rv: u64,
    epoch: u64,
    epoch_rx: watch::Receiver<u64>,
    bookmarks: Option<Interval>,
    deadline: Option<Instant>,
    done: bool,
    _open: Gauge,
}

/// Why the stream woke up.
enum Wake {
    Dropped,
    Timeout,
    Live(Result<Arc<Event>, RecvError>),
    Bookmark,
}

impl WatchStream {
    /// A stream for resource `res` from a [`WatchStart`].
    pub(crate) fn new(
        shared: Arc<Shared>,
        res: usize,
        filter: WatchFilter,
        start: WatchStart,
        opts: WatchOptions,
    ) -> WatchStream {
        let epoch_rx = shared.epoch.subscribe();
        let epoch = *epoch_rx.borrow();
        let bookmarks = opts.bookmarks.map(|period| {
            let period = period.max(Duration::from_millis(1));
            let mut interval = tokio::time::interval_at(Instant::now() + period, period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        let open = Gauge::new(&shared.stats.open_watches[res]);
        WatchStream {
            res,
            filter,
            backlog: start.backlog.into(),
            initial_events_end: opts.initial_events_end,
            live: start.live,
            rv: start.rv,
            epoch,
            epoch_rx,
            bookmarks,
            deadline: opts.timeout.map(|t| Instant::now() + t),
            done: false,
            _open: open,
            shared,
        }
    }

    /// The response body: chunks of newline-delimited events.
    pub(crate) fn into_body_stream(self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        futures::stream::unfold(self, |mut ws| async move {
            let chunk = ws.next_chunk().await?;
            Some((chunk, ws))
        })
    }

    /// The next chunk; `None` ends the stream cleanly, an error ends it abruptly.
    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if self.done {
            return None;
        }
        let mut buf = Vec::new();
        loop {
            // Checked before anything is sent, so no event committed after
            // `drop_watches` returned reaches a dropped stream.
            if *self.epoch_rx.borrow() != self.epoch {
                return Some(Err(abort("watch dropped by the test")));
            }
            self.drain_backlog(&mut buf);
            if !buf.is_empty() {
                return Some(Ok(Bytes::from(buf)));
            }
            let wake = tokio::select! {
                biased;
                _ = self.epoch_rx.changed() => Wake::Dropped,
                () = sleep_until(self.deadline) => Wake::Timeout,
                event = self.live.recv() => Wake::Live(event),
                () = tick(&mut self.bookmarks) => Wake::Bookmark,
            };
            match wake {
                Wake::Dropped => return Some(Err(abort("watch dropped by the test"))),
                Wake::Timeout => {
                    self.done = true;
                    return None;
                }
                Wake::Live(Ok(event)) => {
                    self.push_live(&event, &mut buf);
                    if let Err(e) = self.drain_live(&mut buf) {
                        return Some(Err(e));
                    }
                }
                Wake::Live(Err(RecvError::Lagged(_))) => return Some(Err(self.lagged())),
                Wake::Live(Err(RecvError::Closed)) => {
                    self.done = true;
                    return None;
                }
                Wake::Bookmark => {
                    // Every event up to `current` is already queued on `live`: drain it
                    // first, then the bookmark cannot skip an event.
                    let current = self.shared.store().rv();
                    if let Err(e) = self.drain_live(&mut buf) {
                        return Some(Err(e));
                    }
                    self.rv = self.rv.max(current);
                    self.write_bookmark(&mut buf, false);
                    self.shared.stats.bookmarks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn drain_backlog(&mut self, buf: &mut Vec<u8>) {
        while buf.len() < CHUNK_BYTES {
            let Some(event) = self.backlog.pop_front() else {
                if std::mem::take(&mut self.initial_events_end) {
                    self.write_bookmark(buf, true);
                }
                return;
            };
            self.push(&event, buf);
        }
    }

    /// Moves whatever the live feed already holds into `buf`.
    fn drain_live(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        while buf.len() < CHUNK_BYTES {
            match self.live.try_recv() {
                Ok(event) => self.push_live(&event, buf),
                Err(TryRecvError::Lagged(_)) => return Err(self.lagged()),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        Ok(())
    }

    fn push_live(&mut self, event: &Event, buf: &mut Vec<u8>) {
        if event.rv > self.rv {
            self.push(event, buf);
        }
    }

    fn push(&mut self, event: &Event, buf: &mut Vec<u8>) {
        self.rv = self.rv.max(event.rv);
        if let Some((kind, object)) = self.filter.view(event) {
            write_event(buf, kind.as_str(), &object);
        }
    }

    fn write_bookmark(&self, buf: &mut Vec<u8>, initial_events_end: bool) {
        let rt = &RESOURCES[self.res];
        let mut metadata = json!({ "resourceVersion": self.rv.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
        }
        let object =
            json!({ "kind": rt.kind, "apiVersion": rt.api_version(), "metadata": metadata });
        write_event(buf, "BOOKMARK", &object);
    }

    fn lagged(&self) -> io::Error {
        self.shared.stats.lagged.fetch_add(1, Ordering::Relaxed);
        abort("watch fell behind the live feed")
    }
}

/// The single-event body answering a watch from a compacted resourceVersion: HTTP 200
/// with an ERROR event carrying a 410 `Status`, as a real API server sends.
pub(crate) fn expired_body(e: Expired) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": format!("too old resource version: {} ({})", e.requested, e.compacted),
        "reason": "Expired",
        "code": 410,
    });
    let mut buf = Vec::new();
    write_event(&mut buf, "ERROR", &status);
    futures::stream::iter([Ok(Bytes::from(buf))])
}

/// Appends `{"type":TYPE,"object":OBJECT}\n`.
fn write_event(buf: &mut Vec<u8>, kind: &str, object: &Value) {
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(kind.as_bytes());
    buf.extend_from_slice(b"\",\"object\":");
    serde_json::to_writer(&mut *buf, object).expect("a JSON value serializes");
    buf.extend_from_slice(b"}\n");
}

fn abort(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, why.to_string())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
