//! One mechanism for every source of names (the runtime socket, the pods
//! on this node, Nomad allocations): a bounded table of answers by key,
//! shared between `Identities::identify`, which only reads it and never
//! waits, and the task that fills it.
//!
//! A table is filled one of two ways:
//! - on demand ([`Table::asking`]): a miss queues the key for a task that
//!   asks the source, one request at a time; the answer is `Found`,
//!   `Unknown` (the source does not know it) or `Failed`, retried once
//!   `retry_after` has passed;
//! - by a watch ([`Table::watched`]): the task keeps the table equal to what
//!   the source lists (the pods on this node); a key not there yet is
//!   `Pending`, since it may still arrive.
//!
//! Every change bumps a counter shared by all tables ([`Changes`]), which
//! tells `identify` that what it built before may now be more complete.

use std::{
    collections::HashMap,
    fmt::Display,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc;
use tracing::{info, warn};

/// Entries per table at most (a node runs far fewer containers).
pub const MAX_ENTRIES: usize = crate::model::budget::IDENTITIES;

/// What a table says about a key, now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer<V> {
    Found(V),
    /// The source answered that it does not know the key.
    Unknown,
    /// Asked, or not listed yet: the answer may come.
    Pending,
    /// The source failed; the key is asked again after this instant.
    Failed(Instant),
}

impl<V> Answer<V> {
    /// Asked or not listed yet: the table will change when it comes.
    pub fn is_pending(&self) -> bool {
        matches!(self, Answer::Pending)
    }
    /// Failed: when the key is asked again.
    pub fn retry_at(&self) -> Option<Instant> {
        match self {
            Answer::Failed(at) => Some(*at),
            _ => None,
        }
    }
}

/// A counter of changes to any table; `identify` compares it with the
/// value it last saw.
#[derive(Clone, Debug, Default)]
pub struct Changes(Arc<AtomicU64>);

impl Changes {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

#[derive(Clone, Debug)]
enum Entry<V> {
    Pending,
    Found(V),
    Unknown,
    Failed(Instant),
}

struct Shared<V> {
    entries: Mutex<HashMap<String, Entry<V>>>,
    changes: Changes,
}

impl<V> Shared<V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry<V>>> {
        // A panic elsewhere while holding the lock leaves a usable map.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Answers by key (container id, pod UID, allocation id).
pub struct Table<V> {
    shared: Arc<Shared<V>>,
    /// On-demand tables: where misses are queued.
    ask: Option<mpsc::UnboundedSender<String>>,
}

impl<V: Clone + Send + 'static> Table<V> {
    /// A table filled on demand by `fetch`, on a task of its own (call
    /// inside a tokio runtime). `Ok(Some)` is found, `Ok(None)` unknown,
    /// `Err` failed: retried after `retry_after`. `source` names the source
    /// in the log line of an outage, `meanwhile` what is left out meanwhile.
    pub fn asking<F, Fut, E>(
        changes: &Changes,
        source: &'static str,
        meanwhile: &'static str,
        retry_after: Duration,
        fetch: F,
    ) -> Self
    where
        F: Fn(String) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<V>, E>> + Send,
        E: Display,
    {
        let shared =
            Arc::new(Shared { entries: Mutex::new(HashMap::new()), changes: changes.clone() });
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let writer = Writer { shared: shared.clone() };
        tokio::spawn(async move {
            let mut failing = false;
            while let Some(key) = rx.recv().await {
                match fetch(key.clone()).await {
                    Ok(found) => {
                        if failing {
                            info!("{source} answers again");
                            failing = false;
                        }
                        match found {
                            Some(v) => writer.found(key, v),
                            None => writer.unknown(key),
                        }
                    }
                    Err(e) => {
                        // Once per outage, not once per key.
                        if !failing {
                            warn!(
                                "{source}: {e}; {meanwhile} until it answers (retrying every {retry_after:?})"
                            );
                            failing = true;
                        }
                        writer.failed(key, Instant::now() + retry_after);
                    }
                }
            }
        });
        Table { shared, ask: Some(tx) }
    }

    /// A table kept by a watch: the task holds the [`Writer`].
    #[cfg_attr(not(any(feature = "kubernetes", test)), allow(dead_code))]
    pub fn watched(changes: &Changes) -> (Self, Writer<V>) {
        let shared =
            Arc::new(Shared { entries: Mutex::new(HashMap::new()), changes: changes.clone() });
        (Table { shared: shared.clone(), ask: None }, Writer { shared })
    }

    /// The answer for `key` now. Never waits: on an on-demand table a miss
    /// (or a failure due for retry) queues the key and is `Pending`.
    pub fn get(&self, key: &str) -> Answer<V> {
        let mut entries = self.shared.lock();
        match entries.get(key) {
            Some(Entry::Found(v)) => return Answer::Found(v.clone()),
            Some(Entry::Unknown) => return Answer::Unknown,
            Some(Entry::Pending) => return Answer::Pending,
            Some(Entry::Failed(at)) if Instant::now() < *at => return Answer::Failed(*at),
            Some(Entry::Failed(_)) | None => {}
        }
        let Some(ask) = &self.ask else { return Answer::Pending };
        if entries.len() >= MAX_ENTRIES {
            make_room(&mut entries);
        }
        if ask.send(key.to_owned()).is_ok() {
            entries.insert(key.to_owned(), Entry::Pending);
            Answer::Pending
        } else {
            // The task is gone (runtime shutting down): nothing will come.
            Answer::Unknown
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shared.lock().len()
    }
}

/// Another reader of the same table (the pod Events sink reads the pods
/// the watch keeps); a miss on an on-demand table is queued as usual.
impl<V> Clone for Table<V> {
    fn clone(&self) -> Self {
        Table { shared: self.shared.clone(), ask: self.ask.clone() }
    }
}

/// Keep what was found; if that alone fills the table, start over.
fn make_room<V>(entries: &mut HashMap<String, Entry<V>>) {
    entries.retain(|_, e| matches!(e, Entry::Found(_) | Entry::Pending));
    if entries.len() >= MAX_ENTRIES {
        entries.clear();
    }
}

/// The filling side of a table.
pub struct Writer<V> {
    shared: Arc<Shared<V>>,
}

impl<V> Writer<V> {
    pub fn found(&self, key: String, v: V) {
        self.set(key, Entry::Found(v));
    }
    pub fn unknown(&self, key: String) {
        self.set(key, Entry::Unknown);
    }
    pub fn failed(&self, key: String, retry_at: Instant) {
        self.set(key, Entry::Failed(retry_at));
    }
    fn set(&self, key: String, e: Entry<V>) {
        {
            let mut entries = self.shared.lock();
            if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
                make_room(&mut entries);
            }
            entries.insert(key, e);
        }
        self.shared.changes.bump();
    }
    #[cfg_attr(not(any(feature = "kubernetes", test)), allow(dead_code))]
    pub fn remove(&self, key: &str) {
        let removed = self.shared.lock().remove(key).is_some();
        if removed {
            self.shared.changes.bump();
        }
    }
    /// Replace everything with `all` (a fresh list from a watch).
    #[cfg_attr(not(any(feature = "kubernetes", test)), allow(dead_code))]
    pub fn replace_all(&self, all: HashMap<String, V>) {
        {
            let mut entries = self.shared.lock();
            entries.clear();
            entries.extend(all.into_iter().take(MAX_ENTRIES).map(|(k, v)| (k, Entry::Found(v))));
        }
        self.shared.changes.bump();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    async fn settle<V: Clone + PartialEq + Send + 'static>(t: &Table<V>, key: &str) -> Answer<V> {
        for _ in 0..200 {
            let a = t.get(key);
            if a != Answer::Pending {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{key} still pending")
    }

    #[tokio::test]
    async fn asks_once_per_key_and_caches_found_and_unknown() {
        let changes = Changes::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let t: Table<String> =
            Table::asking(&changes, "test source", "names", Duration::from_secs(30), move |k| {
                let c = c.clone();
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, String>(if k == "a" { Some(format!("name-{k}")) } else { None })
                }
            });
        let before = changes.get();
        // Asked many times while pending: one request.
        for _ in 0..10 {
            assert_eq!(t.get("a"), Answer::Pending);
        }
        assert_eq!(settle(&t, "a").await, Answer::Found("name-a".into()));
        assert_eq!(settle(&t, "b").await, Answer::Unknown);
        assert_eq!(t.get("a"), Answer::Found("name-a".into()));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(changes.get() >= before + 2, "each answer is a change");
    }

    #[tokio::test]
    async fn failures_are_retried_after_the_delay_only() {
        let changes = Changes::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let t: Table<u32> = Table::asking(
            &changes,
            "test source",
            "names",
            Duration::from_millis(150),
            move |_| {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move { if n == 0 { Err("down".to_string()) } else { Ok(Some(7)) } }
            },
        );
        t.get("k");
        let a = settle(&t, "k").await;
        assert!(matches!(a, Answer::Failed(_)), "{a:?}");
        assert!(!a.is_pending() && a.retry_at().is_some());
        // Not asked again before the delay.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(t.get("k"), Answer::Failed(_)));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(t.get("k"), Answer::Pending, "due: asked again");
        assert_eq!(settle(&t, "k").await, Answer::Found(7));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn bounded() {
        let changes = Changes::default();
        let t: Table<u32> =
            Table::asking(&changes, "test source", "names", Duration::from_secs(30), |_| async {
                Ok::<_, String>(None)
            });
        for i in 0..(MAX_ENTRIES + 100) {
            t.get(&format!("k{i}"));
        }
        assert!(t.len() <= MAX_ENTRIES, "{}", t.len());
    }

    #[test]
    fn watched_tables_say_pending_until_listed() {
        let changes = Changes::default();
        let (t, w) = Table::<u32>::watched(&changes);
        assert_eq!(t.get("pod"), Answer::Pending);
        w.found("pod".into(), 1);
        assert_eq!(t.get("pod"), Answer::Found(1));
        let c = changes.get();
        w.replace_all(HashMap::from([("other".to_string(), 2)]));
        assert!(changes.get() > c);
        assert_eq!(t.get("pod"), Answer::Pending, "gone from a fresh list");
        assert_eq!(t.get("other"), Answer::Found(2));
        w.remove("other");
        assert_eq!(t.get("other"), Answer::Pending);
    }
}
