//! The one eviction rule of every bounded table (flows, exchanges'
//! containers, metric series): when a table is full, the least recently
//! seen eighth goes in one batch. One pass and a partial sort per batch, so
//! a flood of new keys costs O(1) amortized per key, never a full sweep each.
//! And the one rule for a string a workload can make long: cut to its cap
//! with a mark (`cap_bytes`).

/// The keys of the least recently seen eighth (at least one) of `entries`
/// (key, last seen).
pub fn oldest_eighth<K: Copy, T: Ord + Copy>(entries: impl Iterator<Item = (K, T)>) -> Vec<K> {
    let mut ages: Vec<(T, K)> = entries.map(|(k, t)| (t, k)).collect();
    if ages.is_empty() {
        return Vec::new();
    }
    let n = (ages.len() / 8).max(1);
    ages.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
    ages.truncate(n);
    ages.into_iter().map(|(_, k)| k).collect()
}

/// The mark a value cut to its cap ends with.
pub const CUT: char = '…';

/// At most `max` bytes (`max` ≥ 3) of `s`, never cut inside a character,
/// ending in [`CUT`] when cut. Copies only what it keeps.
pub fn capped(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(CUT.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT}", &s[..end])
}

/// [`capped`] in place; true if `s` was cut. A cut string owns no spare
/// capacity: it costs its length, as budgets count it.
pub fn cap_bytes(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    *s = capped(s, max);
    s.shrink_to_fit();
    true
}

/// "1 request", "3 requests".
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_eighth_goes() {
        let mut got = oldest_eighth((0..64u64).map(|k| (k, 1000 - k)));
        got.sort_unstable();
        assert_eq!(got, (56..64).collect::<Vec<_>>());
        assert_eq!(oldest_eighth([(7u64, 1u64)].into_iter()), [7]);
        assert!(oldest_eighth(std::iter::empty::<(u64, u64)>()).is_empty());
        assert_eq!(plural(1, "hop", "hops"), "1 hop");
        assert_eq!(plural(2, "hop", "hops"), "2 hops");
    }

    #[test]
    fn capped_strings_end_in_the_mark_and_never_split_a_character() {
        let mut s = "abcdef".to_string();
        assert!(!cap_bytes(&mut s, 6));
        assert_eq!(s, "abcdef");
        assert!(cap_bytes(&mut s, 5));
        assert_eq!(s, "ab…");
        let mut s = "éééé".to_string(); // 8 bytes
        assert!(cap_bytes(&mut s, 6));
        assert_eq!(s, "é…");
        assert!(s.len() <= 6 && s.capacity() == s.len());
    }
}
