//! The file source: a directory of Kubernetes YAML (multi-document files
//! allowed), rescanned on an interval and applied as one atomic relist.
//!
//! A file that cannot be read or parsed is reported (log line with the file and
//! reason, metric) and its last good objects stay in force. Subdirectories are
//! walked once each (by canonical path, at most 32 deep): a symlink loop is
//! reported once and skipped, everything else is read.
//!
//! While running, a changed file is read only once it has stayed the same for
//! one poll interval (and did not change while being read): a file rewritten
//! in place is first truncated, and reading it in that instant would withdraw
//! every object it holds until the next scan.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// The settling clock: tokio's, so tests drive it with paused time (outside a
// runtime, and in production, it is the monotonic clock).
use tokio::time::Instant as SettleInstant;

use serde::Deserialize;

use super::{Index, Object, ObjectKey, Publisher};
use crate::metrics::Metrics;
use crate::poll::{Stamp, Ticker};

/// How long a changed file must stay empty before its objects are withdrawn
/// (a non-empty changed file needs one unchanged poll).
const EMPTY_FILE_QUIET: Duration = Duration::from_secs(2);

/// Why one manifest file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong, with document number and object where known.
    pub reason: String,
}

struct FileState {
    stamp: Stamp,
    objects: Vec<Object>,
}

/// Scans a manifest directory and remembers the last good objects per file.
pub struct FileSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Files seen changed in the last [`FileSource::rescan`] and not read yet,
    /// with the stamp they had then.
    settling: BTreeMap<PathBuf, (Stamp, SettleInstant)>,
    /// Directories the last scan skipped (loops), reported when first seen.
    skipped_dirs: BTreeMap<PathBuf, String>,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Whether the object set changed.
    pub changed: bool,
    /// Files refused in this scan (their previous objects are kept).
    pub errors: Vec<FileError>,
    /// Changed files left for a later scan because they may still be being written.
    pub settling: usize,
}

impl FileSource {
    /// A source over `dir`; nothing is read until [`FileSource::scan`].
    pub fn new(dir: &Path) -> Self {
        FileSource {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            settling: BTreeMap::new(),
            skipped_dirs: BTreeMap::new(),
        }
    }

    /// Rereads every changed file now (start-up, `isthmus check`). An
    /// unreadable directory is an error (the caller keeps the last table).
    pub fn scan(&mut self) -> Result<Scan, FileError> {
        self.scan_files(false)
    }

    /// [`FileSource::scan`] for reloads: a changed file is read only when this
    /// scan finds it as the previous one did, and applied only if it did not
    /// change while it was read; otherwise it waits for the next scan. A file
    /// caught in the middle of an in-place rewrite (truncated, half written)
    /// is thus not applied.
    pub fn rescan(&mut self) -> Result<Scan, FileError> {
        self.scan_files(true)
    }

    fn scan_files(&mut self, settle: bool) -> Result<Scan, FileError> {
        let mut found = Vec::new();
        let skipped = list_manifests(&self.dir, &mut found).map_err(|e| FileError {
            path: self.dir.clone(),
            reason: format!("cannot list directory: {e}"),
        })?;
        let mut scan = Scan::default();
        // Each skipped directory is reported once, while it stays skipped.
        let skipped: BTreeMap<PathBuf, String> = skipped.into_iter().collect();
        for (path, reason) in &skipped {
            if !self.skipped_dirs.contains_key(path) {
                scan.errors.push(FileError {
                    path: path.clone(),
                    reason: reason.clone(),
                });
            }
        }
        self.skipped_dirs = skipped;
        let before = self.files.len();
        self.files.retain(|p, _| found.iter().any(|(f, _)| f == p));
        scan.changed |= self.files.len() != before;
        let mut settling: BTreeMap<PathBuf, (Stamp, SettleInstant)> = BTreeMap::new();
        let now = SettleInstant::now();
        for (path, stamp) in found {
            if self.files.get(&path).is_some_and(|s| s.stamp == stamp) {
                continue;
            }
            if settle {
                // Since when this version has been seen (now, if it is new).
                let since = match self.settling.get(&path) {
                    Some((s, since)) if *s == stamp => *since,
                    _ => now,
                };
                // An in-place rewrite empties the file first; a writer that
                // stalls right then leaves an empty file that looks quiet.
                // Emptying a file on purpose is rare: it must stay empty longer.
                let quiet = if stamp.is_empty() {
                    EMPTY_FILE_QUIET
                } else {
                    Duration::ZERO
                };
                let settled = self.settling.get(&path).is_some_and(|(s, _)| *s == stamp)
                    && now.duration_since(since) >= quiet;
                if !settled {
                    settling.insert(path, (stamp, since));
                    continue;
                }
            }
            let read = std::fs::read_to_string(&path);
            if settle {
                match Stamp::of_path(&path) {
                    Some(now_stamp) if now_stamp == stamp => {}
                    // Written to while we read it: try again once it is quiet.
                    Some(now_stamp) => {
                        settling.insert(path, (now_stamp, SettleInstant::now()));
                        continue;
                    }
                    // Gone meanwhile: the next scan no longer lists it.
                    None => continue,
                }
            }
            match read
                .map_err(|e| format!("cannot read: {e}"))
                .and_then(|text| parse_manifests(&text))
            {
                Ok(objects) => {
                    self.files.insert(path, FileState { stamp, objects });
                    scan.changed = true;
                }
                Err(reason) => {
                    // Remember the stamp so the same broken content is reported once,
                    // but keep the last good objects.
                    let objects = self
                        .files
                        .remove(&path)
                        .map(|s| s.objects)
                        .unwrap_or_default();
                    self.files
                        .insert(path.clone(), FileState { stamp, objects });
                    scan.errors.push(FileError { path, reason });
                }
            }
        }
        scan.settling = settling.len();
        self.settling = settling;
        Ok(scan)
    }

    /// Every object currently in force, in file order.
    pub fn objects(&self) -> Vec<Object> {
        self.files
            .values()
            .flat_map(|f| f.objects.iter().cloned())
            .collect()
    }

    /// The file an object came from, for messages.
    pub fn origin(&self, kind: &str, key: &ObjectKey) -> Option<&Path> {
        self.files.iter().find_map(|(path, f)| {
            f.objects
                .iter()
                .any(|o| o.key() == *key && kind_name(o) == kind)
                .then_some(path.as_path())
        })
    }

    /// Loads everything once, applies it, and publishes: the start-up path,
    /// shared with `isthmus check`.
    pub fn load_into(
        &mut self,
        index: &mut Index,
    ) -> Result<(Scan, Vec<super::ObjectError>), FileError> {
        let scan = self.scan()?;
        let errors = index.replace_all(&self.objects());
        Ok((scan, errors))
    }
}

fn kind_name(o: &Object) -> &'static str {
    match o {
        Object::Service(_) => "Service",
        Object::EndpointSlice(_) => "EndpointSlice",
        Object::Mapping(_) => "Mapping",
        Object::TrafficSplit(_) => "TrafficSplit",
        Object::HttpRoute(_) => "HTTPRoute",
        Object::Gateway(_) => "Gateway",
        Object::GatewayClass(_) => "GatewayClass",
        Object::ReferenceGrant(_) => "ReferenceGrant",
    }
}

/// Deepest directory nesting walked (beyond: reported like a loop).
const MAX_DEPTH: usize = 32;

/// What a directory walk found besides manifests.
#[derive(Default)]
struct Walk {
    /// Canonical directories already walked.
    visited: HashSet<PathBuf>,
    /// Directories skipped: (path, why).
    skipped: Vec<(PathBuf, String)>,
}

fn list_manifests(
    dir: &Path,
    out: &mut Vec<(PathBuf, Stamp)>,
) -> std::io::Result<Vec<(PathBuf, String)>> {
    let mut walk = Walk::default();
    walk.visited.insert(std::fs::canonicalize(dir)?);
    walk_dir(dir, out, &mut walk, 0)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(walk.skipped)
}

fn walk_dir(
    dir: &Path,
    out: &mut Vec<(PathBuf, Stamp)>,
    walk: &mut Walk,
    depth: usize,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue; // editor swap files, ConfigMap `..data` internals
        }
        let path = entry.path();
        // Follows symlinks (ConfigMap mounts are symlinks into `..data`).
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            // A symlinked directory may lead back up (a loop) or to one
            // already walked: each directory is walked once.
            let Ok(canonical) = std::fs::canonicalize(&path) else {
                continue;
            };
            if depth + 1 > MAX_DEPTH {
                walk.skipped.push((
                    path,
                    format!("directory loop or nesting deeper than {MAX_DEPTH}; skipped"),
                ));
            } else if !walk.visited.insert(canonical.clone()) {
                walk.skipped.push((
                    path,
                    format!(
                        "directory loop: leads to {}, already read; skipped",
                        canonical.display()
                    ),
                ));
            } else {
                walk_dir(&path, out, walk, depth + 1)?;
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push((path, Stamp::of(&meta)));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

/// Parses every YAML document of a file into watched objects; other kinds are
/// ignored. Any malformed document refuses the whole file.
pub fn parse_manifests(text: &str) -> Result<Vec<Object>, String> {
    let mut objects = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value =
            serde_yaml::Value::deserialize(doc).map_err(|e| format!("document {n}: {e}"))?;
        if value.is_null() {
            continue;
        }
        let meta: TypeMeta =
            serde_yaml::from_value(value.clone()).map_err(|e| format!("document {n}: {e}"))?;
        let what = || {
            let name = value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|v| v.as_str())
                .unwrap_or("<unnamed>");
            format!("document {n} ({} {name})", meta.kind)
        };
        let obj = match (meta.api_version.as_str(), meta.kind.as_str()) {
            ("v1", "Service") => serde_yaml::from_value(value.clone()).map(|o| Object::Service(Box::new(o))),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                serde_yaml::from_value(value.clone()).map(|o| Object::EndpointSlice(Box::new(o)))
            }
            ("isthmus.dev/v1alpha1", "Mapping") => {
                serde_yaml::from_value(value.clone()).map(|o| Object::Mapping(Box::new(o)))
            }
            (v, "TrafficSplit") if v.starts_with("split.smi-spec.io/") => {
                serde_yaml::from_value(value.clone()).map(|o| Object::TrafficSplit(Box::new(o)))
            }
            ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
                serde_yaml::from_value(value.clone()).map(|o| Object::HttpRoute(Box::new(o)))
            }
            ("gateway.networking.k8s.io/v1", "Gateway") => {
                serde_yaml::from_value(value.clone()).map(|o| Object::Gateway(Box::new(o)))
            }
            ("gateway.networking.k8s.io/v1", "GatewayClass") => {
                serde_yaml::from_value(value.clone()).map(|o| Object::GatewayClass(Box::new(o)))
            }
            ("gateway.networking.k8s.io/v1beta1" | "gateway.networking.k8s.io/v1", "ReferenceGrant") => {
                serde_yaml::from_value(value.clone()).map(|o| Object::ReferenceGrant(Box::new(o)))
            }
            (_, "Mapping") | (_, "EndpointSlice") => {
                return Err(format!(
                    "{}: apiVersion {:?} is not supported (isthmus.dev/v1alpha1 Mapping, discovery.k8s.io/v1 EndpointSlice)",
                    what(),
                    meta.api_version
                ))
            }
            ("", _) | (_, "") => return Err(format!("document {n}: apiVersion and kind are required")),
            _ => continue,
        }
        .map_err(|e| format!("{}: {e}", what()))?;
        if obj.key().name.is_empty() {
            return Err(format!("{}: metadata.name is required", what()));
        }
        objects.push(obj);
    }
    Ok(objects)
}

/// Runs the file source: initial load happened already; rescans every
/// `interval` and publishes on change, until `shutdown` flips.
pub async fn run(
    mut source: FileSource,
    mut index: Index,
    publisher: Publisher,
    metrics: std::sync::Arc<Metrics>,
    interval: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = Ticker::new(interval, shutdown);
    while ticker.tick().await {
        let seen = Instant::now();
        let scan = match source.rescan() {
            Ok(s) => s,
            Err(e) => {
                metrics.discovery_errors.with_label_values(&["file"]).inc();
                tracing::warn!(error = %e, "manifest directory unreadable; keeping the last routes");
                publisher.source_error("file", format!("manifest directory unreadable: {e}"));
                continue;
            }
        };
        if !scan.changed && scan.errors.is_empty() {
            publisher.synced();
            continue;
        }
        let objects = apply_scan(&source, &scan, &mut index, &publisher, &metrics);
        if scan.changed {
            publisher.publish(&mut index, seen);
            tracing::info!(objects, "manifests reloaded");
        } else {
            publisher.synced();
        }
    }
}

/// Reports a scan's refused files and, when the object set changed, applies it
/// to the index (reporting refused objects with their file). Returns the
/// number of objects in force.
pub fn apply_scan(
    source: &FileSource,
    scan: &Scan,
    index: &mut Index,
    publisher: &Publisher,
    metrics: &Metrics,
) -> usize {
    for e in &scan.errors {
        metrics.discovery_errors.with_label_values(&["file"]).inc();
        tracing::warn!(file = %e.path.display(), reason = %e.reason, "manifest file refused; its last good objects stay in force");
        publisher.source_error(
            "file",
            format!(
                "{}: {} (last good objects stay)",
                e.path.display(),
                e.reason
            ),
        );
    }
    let objects = source.objects();
    if scan.changed {
        metrics.discovery_events.with_label_values(&["file"]).inc();
        for e in index.replace_all(&objects) {
            let origin = source
                .origin(e.kind, &e.key)
                .map(|p| p.display().to_string());
            publisher.report(&e, origin.as_deref());
        }
    }
    objects.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str =
        "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: t}\nspec: {ports: [{port: 80}]}\n";

    #[tokio::test(start_paused = true)]
    async fn rescan_reads_a_changed_file_only_once_it_is_quiet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, SERVICE).expect("write");
        let mut source = FileSource::new(dir.path());
        assert!(
            source.scan().expect("scan").changed,
            "start-up reads at once"
        );
        assert_eq!(source.objects().len(), 1);

        // The instant of an in-place rewrite: truncated. Not applied yet.
        std::fs::write(&file, "").expect("truncate");
        let scan = source.rescan().expect("rescan");
        assert!(!scan.changed);
        assert_eq!(scan.settling, 1);
        assert_eq!(
            source.objects().len(),
            1,
            "last objects stay while settling"
        );

        // Written before the next scan: the new stamp settles again, then applies.
        std::fs::write(
            &file,
            format!("{SERVICE}---\n{}", SERVICE.replace("name: a", "name: b")),
        )
        .expect("write");
        assert!(!source.rescan().expect("rescan").changed);
        let scan = source.rescan().expect("rescan");
        assert!(scan.changed);
        assert_eq!(scan.settling, 0);
        assert_eq!(source.objects().len(), 2);

        // A file left empty is applied once it has stayed so for the longer
        // quiet period (a stalled in-place rewrite looks like this at first).
        // The settling clock is tokio's, paused here: only `advance` moves it.
        std::fs::write(&file, "").expect("empty");
        assert!(!source.rescan().expect("rescan").changed);
        assert!(!source.rescan().expect("rescan").changed, "too soon");
        tokio::time::advance(EMPTY_FILE_QUIET - Duration::from_millis(1)).await;
        assert!(!source.rescan().expect("rescan").changed, "still too soon");
        assert_eq!(source.objects().len(), 2);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            source.rescan().expect("rescan").changed,
            "quiet long enough"
        );
        assert!(source.objects().is_empty());

        // A removed file is gone at once.
        std::fs::write(&file, SERVICE).expect("write");
        source.rescan().expect("rescan");
        source.rescan().expect("rescan");
        assert_eq!(source.objects().len(), 1);
        std::fs::remove_file(&file).expect("remove");
        assert!(source.rescan().expect("rescan").changed);
        assert!(source.objects().is_empty());
    }

    /// The poll loop itself on paused time: its ticker and the empty-file quiet
    /// period both run on tokio's clock, so which tick applies the change is
    /// decided by virtual time alone. Ticks come at 0, 1, 2, 3 s; the test
    /// looks half-way between them.
    #[tokio::test(start_paused = true)]
    async fn the_poll_loop_withdraws_an_emptied_file_after_the_quiet_period() {
        use crate::routes::{shared_empty, BackendSettings};
        use std::sync::Arc;

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, SERVICE).expect("write");
        let mut source = FileSource::new(dir.path());
        let mut index = Index::new(super::super::IndexConfig {
            cluster_domain: "cluster.local".into(),
            export_label: "mirror.linkerd.io/exported".into(),
            namespaces: Vec::new(),
            allowed: Arc::from(Vec::new()),
            defaults: BackendSettings::with_timeouts(
                Duration::from_secs(15),
                Duration::from_secs(1),
                Duration::from_secs(60),
            ),
            egress: false,
        });
        source.load_into(&mut index).expect("initial load");
        let metrics = Arc::new(Metrics::new());
        let publisher =
            Publisher::new(shared_empty(), metrics.clone(), super::super::Source::Files);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(
            source,
            index,
            publisher,
            metrics.clone(),
            Duration::from_secs(1),
            stopped,
        ));
        let applied = || metrics.discovery_events.with_label_values(&["file"]).get();
        let half = Duration::from_millis(500);

        tokio::time::sleep(half).await; // t = 0.5: the first tick (t = 0) changed nothing
        assert_eq!(applied(), 0);
        std::fs::write(&file, "").expect("empty");
        // t = 1: seen empty; t = 2: empty for 1 s; t = 3: empty for 2 s, withdrawn.
        tokio::time::sleep(Duration::from_secs(2)).await; // t = 2.5
        assert_eq!(applied(), 0, "withdrawn before the quiet period");
        tokio::time::sleep(Duration::from_secs(1)).await; // t = 3.5
        assert_eq!(applied(), 1, "withdrawn once quiet for 2 s");
        stop.send_replace(true);
        task.await.expect("poll loop ends on shutdown");
    }

    #[cfg(unix)]
    #[test]
    fn directory_symlink_loops_are_skipped_and_reported_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.yaml"), SERVICE).expect("write");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        std::fs::write(sub.join("b.yaml"), SERVICE.replace("name: a", "name: b")).expect("write");
        // Back up to the top, and to itself: without loop detection the walk
        // never ends (or ends in ENAMETOOLONG with every file listed many times).
        std::os::unix::fs::symlink("..", sub.join("up")).expect("symlink");
        std::os::unix::fs::symlink(".", sub.join("self")).expect("symlink");
        let mut source = FileSource::new(dir.path());
        let scan = source.scan().expect("the directory is readable");
        assert_eq!(source.objects().len(), 2, "each file once");
        assert_eq!(scan.errors.len(), 2, "{:?}", scan.errors);
        for e in &scan.errors {
            assert!(e.reason.contains("directory loop"), "{e}");
        }
        let again = source.rescan().expect("rescan");
        assert!(again.errors.is_empty(), "reported once: {:?}", again.errors);
        assert_eq!(source.objects().len(), 2);
    }
}
