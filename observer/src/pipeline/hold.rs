//! Records of flows waiting for the veth that names them (cgroup v1
//! fallback), in arrival order, with a count per socket cookie so that "is
//! this flow waiting?" costs O(1) on every packet.
use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};
use observer_ebpf::Record;

pub struct HoldQueue {
    /// In arrival order.
    records: VecDeque<Record>,
    /// Socket cookie → records held.
    held: HashMap<u64, usize>,
    cap: usize,
}

impl HoldQueue {
    pub fn new(cap: usize) -> Self {
        Self { records: VecDeque::new(), held: HashMap::new(), cap }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn holds(&self, cookie: u64) -> bool {
        self.held.contains_key(&cookie)
    }

    /// Hold `rec`; when full, the oldest record comes back, to go out
    /// unnamed.
    pub fn push(&mut self, rec: Record) -> Option<Record> {
        let out = if self.records.len() >= self.cap { self.records.pop_front() } else { None };
        if let Some(o) = &out {
            self.forget(o.cookie, 1);
        }
        *self.held.entry(rec.cookie).or_default() += 1;
        self.records.push_back(rec);
        out
    }

    /// Every record of the flows `cookies` names, in arrival order.
    pub fn take(&mut self, cookies: &[u64]) -> Vec<Record> {
        if !cookies.iter().any(|c| self.holds(*c)) {
            return Vec::new();
        }
        let (go, stay): (VecDeque<Record>, VecDeque<Record>) = std::mem::take(&mut self.records)
            .into_iter()
            .partition(|r| cookies.contains(&r.cookie));
        self.records = stay;
        for c in cookies {
            self.held.remove(c);
        }
        go.into()
    }

    /// The flows with a record held since before `before_ns`.
    pub fn due(&self, before_ns: u64) -> Vec<u64> {
        let mut cookies: Vec<u64> =
            self.records.iter().filter(|r| r.ts_ns <= before_ns).map(|r| r.cookie).collect();
        cookies.sort_unstable();
        cookies.dedup();
        cookies
    }

    fn forget(&mut self, cookie: u64, n: usize) {
        if let Some(c) = self.held.get_mut(&cookie) {
            *c -= n.min(*c);
            if *c == 0 {
                self.held.remove(&cookie);
            }
        }
    }
}
