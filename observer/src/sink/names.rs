//! Names as views show them (the `report` table and the TUI): a node's name
//! without the domain every node shares (stated once instead), and any name
//! cut in the middle with a mark `…` where a column is too narrow, widened
//! until no two distinct names read alike. Pure: no terminal here.
use std::collections::HashSet;

/// The mark of a cut.
pub const MARK: char = '…';

/// The domain (from a `.`) that every one of two or more names ends in,
/// longest first, leaving something of each: `.us-west-2.compute.internal`
/// for EKS names. Empty when there is none.
pub fn common_suffix<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect::<HashSet<_>>().into_iter().collect();
    let Some(first) = names.first().filter(|_| names.len() > 1) else { return String::new() };
    for (i, _) in first.match_indices('.') {
        let suffix = &first[i..];
        if i > 0 && names.iter().all(|n| n.len() > suffix.len() && n.ends_with(suffix)) {
            return suffix.to_string();
        }
    }
    String::new()
}

/// `name` without `suffix` (when it ends in it and keeps something).
pub fn strip<'a>(name: &'a str, suffix: &str) -> &'a str {
    match name.strip_suffix(suffix) {
        Some(s) if !suffix.is_empty() && !s.is_empty() => s,
        _ => name,
    }
}

/// `s` in at most `w` characters: whole if it fits, else its start and its
/// end around [`MARK`] (never cut without the mark).
pub fn cut_middle(s: &str, w: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let keep = w - 1;
    let tail = keep / 2;
    let head = keep - tail;
    let mut out: String = chars[..head].iter().collect();
    out.push(MARK);
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// A label of parts (`namespace/pod/container`) in at most `w` characters:
/// the longest part is cut in the middle, one character at a time, so each
/// part keeps its start and its end (a pod's hash, a container's name);
/// the whole cut in the middle when parts cannot shrink further.
pub fn cut_parts(s: &str, w: usize) -> String {
    let parts: Vec<&str> = s.split('/').collect();
    let mut widths: Vec<usize> = parts.iter().map(|p| p.chars().count()).collect();
    let total = |ws: &[usize]| ws.iter().sum::<usize>() + ws.len().saturating_sub(1);
    while total(&widths) > w {
        let Some((i, _)) =
            widths.iter().enumerate().filter(|(_, &x)| x > 5).max_by_key(|(_, &x)| x)
        else {
            return cut_middle(s, w);
        };
        widths[i] -= 1;
    }
    parts.iter().zip(&widths).map(|(p, &x)| cut_middle(p, x)).collect::<Vec<_>>().join("/")
}

/// The narrowest width from `want` up at which `cut` renders the distinct
/// `names` all differently (at worst, the longest name's: nothing cut).
pub fn distinct_width<'a>(
    names: impl IntoIterator<Item = &'a str> + Clone,
    want: usize,
    cut: impl Fn(&str, usize) -> String,
) -> usize {
    let distinct: HashSet<&str> = names.into_iter().collect();
    let longest = distinct.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let mut w = want;
    while w < longest {
        let shown: HashSet<String> = distinct.iter().map(|n| cut(n, w)).collect();
        if shown.len() == distinct.len() {
            return w;
        }
        w += 1;
    }
    w.max(want.min(longest))
}

/// The width of the terminal `report` writes to: `COLUMNS`, else the
/// tty's, else 100 (a pipe, a file, CI). At least 60.
pub fn terminal_width() -> usize {
    use std::io::IsTerminal;
    let cols = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<usize>().ok());
    let tty = || {
        std::io::stdout()
            .is_terminal()
            .then(|| ratatui::crossterm::terminal::size().ok().map(|(w, _)| w as usize))
            .flatten()
    };
    cols.filter(|&c| c > 0).or_else(tty).unwrap_or(100).max(60)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EKS: [&str; 3] = [
        "ip-10-0-1-17.us-west-2.compute.internal",
        "ip-10-0-1-18.us-west-2.compute.internal",
        "ip-10-0-12-7.us-west-2.compute.internal",
    ];

    #[test]
    fn eks_names_keep_their_host_and_state_the_domain_once() {
        let s = common_suffix(EKS);
        assert_eq!(s, ".us-west-2.compute.internal");
        assert_eq!(strip(EKS[0], &s), "ip-10-0-1-17");
        // One name, or names without a shared domain: nothing to strip.
        assert_eq!(common_suffix(["ip-1.a.b"]), "");
        assert_eq!(common_suffix(["a.x", "b.y"]), "");
        assert_eq!(common_suffix(["a.x", "a.x"]), "", "one distinct name");
        // Never the whole of a name.
        assert_eq!(common_suffix([".x", "a.x"]), "");
    }

    #[test]
    fn a_cut_is_marked_and_distinct_names_stay_distinct() {
        let id = "i-0abc1234def567890";
        let c = cut_middle(id, 14);
        assert_eq!(c.chars().count(), 14);
        assert!(c.contains(MARK), "{c}");
        assert_eq!(cut_middle(id, 40), id);
        let w = distinct_width(EKS, 10, cut_middle);
        let shown: HashSet<String> = EKS.iter().map(|n| cut_middle(n, w)).collect();
        assert_eq!(shown.len(), 3, "{w}");
        // Left-cut alike names come apart.
        let same_end = ["aaaa-x-end", "bbbb-x-end"];
        assert!(distinct_width(same_end, 4, cut_middle) <= 10);
        assert_ne!(
            cut_middle(same_end[0], distinct_width(same_end, 4, cut_middle)),
            cut_middle(same_end[1], distinct_width(same_end, 4, cut_middle))
        );
    }

    #[test]
    fn a_label_of_parts_keeps_each_part_s_ends() {
        let a = "payments/api-7f9c5d6b8-x2k4q/istio-proxy";
        let b = "payments/api-7f9c5d6b8-q9z8r/istio-proxy";
        let c = "payments/api-7f9c5d6b8-x2k4q/api";
        for w in [20, 24, 30] {
            let (x, y, z) = (cut_parts(a, w), cut_parts(b, w), cut_parts(c, w));
            assert!(x.chars().count() <= w, "{x}");
            assert!(x.contains(MARK), "{x}");
            assert!(x != y && x != z && y != z, "{w}: {x} {y} {z}");
        }
        assert!(cut_parts(a, 30).ends_with("2k4q/istio…roxy"), "{}", cut_parts(a, 30));
        assert_eq!(cut_parts(c, 40), c);
    }
}
