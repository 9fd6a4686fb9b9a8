//! cgroup v2: where the hierarchy is mounted, and which path a cgroup id
//! (what `bpf_skb_cgroup_id`/`bpf_get_current_cgroup_id` return) names.
//!
//! On 64-bit kernels since 5.5 a cgroup v2 id is the kernfs node id, which is
//! also the inode number of the cgroup's directory, so an id is resolved by
//! finding the directory with that inode below the mount.

use std::{
    collections::hash_map::Entry as MapEntry,
    ffi::OsString,
    fs::{self, File},
    io,
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::{ffi::OsStringExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use foldhash::{HashMap, HashMapExt};

#[cfg(test)]
/// The mount point of the cgroup2 filesystem in `/proc/self/mountinfo` text:
/// `/sys/fs/cgroup` if that is cgroup2 (unified hosts), else the first cgroup2
/// mount of the whole hierarchy (e.g. `/sys/fs/cgroup/unified` on hybrid
/// hosts), else the first cgroup2 mount at all. `None` on cgroup1-only hosts.
/// Of several mounts on one mount point, the last (the visible one) counts.
/// Octal escapes (`\040` for a space) are decoded.
pub fn find_cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    find_cgroup2_root_bytes(mountinfo.as_bytes())
}

/// [`find_cgroup2_root`] on the raw bytes (mount points need not be UTF-8).
fn find_cgroup2_root_bytes(mountinfo: &[u8]) -> Option<PathBuf> {
    struct Mount {
        point: Vec<u8>,
        whole_fs: bool,
        cgroup2: bool,
    }
    let mut visible: Vec<Mount> = Vec::new();
    for line in mountinfo.split(|&b| b == b'\n') {
        // id parent maj:min root mount-point options [optional...] - fstype source super-options
        let f: Vec<&[u8]> = line.split(|&b| b == b' ').filter(|s| !s.is_empty()).collect();
        let Some(sep) = f.iter().skip(6).position(|&x| x == b"-").map(|i| i + 6) else {
            continue;
        };
        let Some(fstype) = f.get(sep + 1) else {
            continue;
        };
        let point = unescape(f[4]);
        visible.retain(|m| m.point != point);
        visible.push(Mount {
            point,
            whole_fs: unescape(f[3]) == b"/",
            cgroup2: *fstype == b"cgroup2",
        });
    }
    let c2: Vec<&Mount> = visible.iter().filter(|m| m.cgroup2).collect();
    c2.iter()
        .find(|m| m.point == b"/sys/fs/cgroup")
        .or_else(|| c2.iter().find(|m| m.whole_fs))
        .or_else(|| c2.first())
        .map(|m| PathBuf::from(OsString::from_vec(m.point.clone())))
}

/// Decode mountinfo's `\ooo` escapes (space, tab, newline, backslash).
fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..=i + 3].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = s[i + 1..=i + 3].iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// [`find_cgroup2_root`] of this process's `/proc/self/mountinfo`.
pub fn detect_cgroup2_root() -> io::Result<Option<PathBuf>> {
    let text = fs::read("/proc/self/mountinfo")?;
    Ok(find_cgroup2_root_bytes(&text))
}

/// Entries kept by default: a cap, not a target.
pub const DEFAULT_MAX_ENTRIES: usize = crate::model::budget::CGROUP_PATHS;
/// At most one tree walk per this interval for misses.
pub const MIN_RESCAN_INTERVAL: Duration = Duration::from_millis(200);
/// An id a walk did not find does not trigger another walk for this long.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);
const NEGATIVE_MAX: usize = 4096;

#[derive(Debug)]
struct Entry {
    /// Relative to the root, `/`-led; the root is "/".
    path: String,
    /// `tick` of the last lookup or insertion: the LRU order.
    last_used: u64,
    /// Generation of the last walk that saw the directory.
    seen_gen: u64,
}

/// Direct id → directory lookup through `open_by_handle_at(2)` on the cgroup2
/// mount (needs CAP_DAC_READ_SEARCH); an O(1) fast path before a walk.
#[derive(Debug)]
enum Handles {
    Unprobed,
    Unavailable,
    Ready { mount: File, canon_root: PathBuf, dev: u64, handle_type: i32 },
}

/// Maps cgroup v2 ids to paths below a cgroup2 root, e.g.
/// `"/machine.slice/libpod-abc.scope"`; the root itself is `"/"`.
///
/// A miss first tries the kernel's file-handle lookup (cgroup2 roots only,
/// when privileged), then walks the tree, at most once per
/// [`MIN_RESCAN_INTERVAL`]; ids a walk did not find are remembered for
/// [`NEGATIVE_TTL`] so a flood of unknown ids cannot keep it walking. A cgroup
/// that disappears keeps its cached path (its events may still be draining);
/// the cache holds at most `max_entries` ids, evicting vanished cgroups first,
/// least recently used first. [`forget_missing`](Self::forget_missing) drops
/// vanished ones earlier; it knows what vanished from the last walk, so call
/// [`rescan`](Self::rescan) first when nothing has missed in a while.
#[derive(Debug)]
pub struct CgroupResolver {
    root: PathBuf,
    entries: HashMap<u64, Entry>,
    /// Ids not found, and when.
    negative: HashMap<u64, Instant>,
    max_entries: usize,
    min_rescan_interval: Duration,
    negative_ttl: Duration,
    last_scan: Option<Instant>,
    /// Count of successful walks.
    generation: u64,
    tick: u64,
    skipped: u64,
    scans: u64,
    handles: Handles,
    /// The root is the hierarchy's own (inode 1), not a subtree.
    hierarchy_root: Option<bool>,
}

impl CgroupResolver {
    pub fn new(root: PathBuf) -> Self {
        Self::with_capacity(root, DEFAULT_MAX_ENTRIES)
    }

    /// At most `max_entries` (≥ 1) ids cached.
    pub fn with_capacity(root: PathBuf, max_entries: usize) -> Self {
        Self {
            root,
            entries: HashMap::new(),
            negative: HashMap::new(),
            max_entries: max_entries.max(1),
            min_rescan_interval: MIN_RESCAN_INTERVAL,
            negative_ttl: NEGATIVE_TTL,
            last_scan: None,
            generation: 0,
            tick: 0,
            skipped: 0,
            scans: 0,
            handles: Handles::Unprobed,
            hierarchy_root: None,
        }
    }

    #[cfg(test)]
    pub fn set_min_rescan_interval(&mut self, interval: Duration) {
        self.min_rescan_interval = interval;
    }

    #[cfg(test)]
    pub fn set_negative_ttl(&mut self, ttl: Duration) {
        self.negative_ttl = ttl;
    }

    #[cfg(test)]
    /// Ids cached.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    /// Paths passed over so far: non-UTF-8 names, symlinks, directories that
    /// could not be read or vanished mid-walk, other filesystems mounted
    /// inside, failed walks of the root.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    #[cfg(test)]
    /// Tree walks so far.
    pub fn scans(&self) -> u64 {
        self.scans
    }

    /// A cgroup the kernel reported as it was created (cgroup_mkdir), with
    /// its path from the hierarchy's root. Taken only when this resolver's
    /// root is that root (inode 1), where the two kinds of path agree.
    pub fn learn(&mut self, id: u64, path: &str) {
        use std::os::unix::fs::MetadataExt;
        let root = &self.root;
        let at_root = *self
            .hierarchy_root
            .get_or_insert_with(|| fs::metadata(root).map(|m| m.ino()).ok() == Some(1));
        if !at_root || !path.starts_with('/') {
            return;
        }
        self.tick += 1;
        self.negative.remove(&id);
        self.entries.insert(
            id,
            Entry { path: path.to_string(), last_used: self.tick, seen_gen: self.generation },
        );
        self.enforce_cap();
    }

    /// The path of cgroup `id` below the root, `"/"` for the root.
    pub fn resolve(&mut self, id: u64) -> Option<String> {
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(&id) {
            e.last_used = tick;
            return Some(e.path.clone());
        }
        let now = Instant::now();
        if let Some(&at) = self.negative.get(&id) {
            if now.saturating_duration_since(at) < self.negative_ttl {
                return None;
            }
            self.negative.remove(&id);
        }
        if let Some(path) = self.lookup_by_handle(id) {
            self.entries.insert(
                id,
                Entry { path: path.clone(), last_used: tick, seen_gen: self.generation },
            );
            self.enforce_cap();
            return Some(path);
        }
        let due = self
            .last_scan
            .is_none_or(|t| now.saturating_duration_since(t) >= self.min_rescan_interval);
        if !due {
            return None;
        }
        if self.scan(now).is_err() {
            self.skipped += 1;
        }
        self.tick += 1;
        let tick = self.tick;
        let found = self.entries.get_mut(&id).map(|e| {
            e.last_used = tick;
            e.path.clone()
        });
        if found.is_none() {
            self.remember_missing(id, now);
        }
        self.enforce_cap();
        found
    }

    #[cfg(test)]
    /// Walk the tree now, whatever the rate limit; the number of cgroups seen.
    pub fn rescan(&mut self) -> io::Result<usize> {
        let n = self.scan(Instant::now())?;
        self.enforce_cap();
        Ok(n)
    }

    #[cfg(test)]
    /// Drop cached cgroups the last walk did not see, but for the `keep` most
    /// recently used of them; the number dropped.
    pub fn forget_missing(&mut self, keep: usize) -> usize {
        let gen = self.generation;
        let mut gone: Vec<(u64, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.seen_gen != gen)
            .map(|(&id, e)| (e.last_used, id))
            .collect();
        if gone.len() <= keep {
            return 0;
        }
        gone.sort_unstable_by(|a, b| b.cmp(a));
        for &(_, id) in &gone[keep..] {
            self.entries.remove(&id);
        }
        gone.len() - keep
    }

    fn scan(&mut self, now: Instant) -> io::Result<usize> {
        self.last_scan = Some(now);
        self.scans += 1;
        let found = walk(&self.root, &mut self.skipped)?;
        self.generation += 1;
        self.tick += 1;
        let (gen, tick, n) = (self.generation, self.tick, found.len());
        for (id, path) in found {
            self.negative.remove(&id);
            match self.entries.entry(id) {
                MapEntry::Occupied(mut o) => {
                    let e = o.get_mut();
                    e.seen_gen = gen;
                    // Renamed (cgroup2 allows it): the current name.
                    if e.path != path {
                        e.path = path;
                    }
                }
                MapEntry::Vacant(v) => {
                    v.insert(Entry { path, last_used: tick, seen_gen: gen });
                }
            }
        }
        Ok(n)
    }

    fn remember_missing(&mut self, id: u64, now: Instant) {
        if self.negative.len() >= NEGATIVE_MAX {
            let ttl = self.negative_ttl;
            self.negative.retain(|_, at| now.saturating_duration_since(*at) < ttl);
            if self.negative.len() >= NEGATIVE_MAX {
                self.negative.clear();
            }
        }
        self.negative.insert(id, now);
    }

    /// Over the cap: evict down to 7/8 of it, vanished cgroups first, least
    /// recently used first (batched so the sort is amortized).
    fn enforce_cap(&mut self) {
        if self.entries.len() <= self.max_entries {
            return;
        }
        let target = self.max_entries - self.max_entries / 8;
        let excess = self.entries.len() - target;
        let gen = self.generation;
        let mut order: Vec<(bool, u64, u64)> =
            self.entries.iter().map(|(&id, e)| (e.seen_gen == gen, e.last_used, id)).collect();
        order.select_nth_unstable(excess - 1);
        for &(_, _, id) in &order[..excess] {
            self.entries.remove(&id);
        }
    }

    fn lookup_by_handle(&mut self, id: u64) -> Option<String> {
        if matches!(self.handles, Handles::Unprobed) {
            self.handles = probe_handles(&self.root).unwrap_or(Handles::Unavailable);
        }
        let Handles::Ready { mount, canon_root, dev, handle_type } = &self.handles else {
            return None;
        };
        let file = match open_by_id(mount, *handle_type, id) {
            Ok(f) => f,
            Err(e) => {
                match e.raw_os_error() {
                    // No such cgroup (any more), or a transient shortage.
                    Some(
                        libc::ESTALE | libc::ENOENT | libc::ENOMEM | libc::EMFILE | libc::ENFILE,
                    ) => {}
                    // Not privileged, not supported: stop trying.
                    _ => self.handles = Handles::Unavailable,
                }
                return None;
            }
        };
        let md = file.metadata().ok()?;
        if md.ino() != id || md.dev() != *dev {
            return None;
        }
        let link = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
        // Outside the root (another subtree of the same mount): leave it to the walk.
        let rel = link.strip_prefix(canon_root).ok()?.to_path_buf();
        let Some(rel_str) = rel.to_str() else {
            self.skipped += 1;
            return None;
        };
        // Double-check through the root as given: same directory.
        let check = fs::symlink_metadata(self.root.join(&rel)).ok()?;
        if check.ino() != id || check.dev() != *dev || !check.is_dir() {
            return None;
        }
        Some(format!("/{rel_str}"))
    }
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// `struct file_handle` with room for any handle (MAX_HANDLE_SZ).
#[repr(C)]
struct FileHandle {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; 128],
}

/// The fast path works if the root is a cgroup2 mount whose handles are the
/// 8-byte node id (checked on the root: its handle must carry its inode).
fn probe_handles(root: &Path) -> io::Result<Handles> {
    let mount = File::open(root)?;
    let md = mount.metadata()?;
    // SAFETY: statfs is plain old data; fstatfs fills it from a valid fd.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(mount.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)]
    if st.f_type as i64 != CGROUP2_SUPER_MAGIC {
        return Ok(Handles::Unavailable);
    }
    let mut h = FileHandle { handle_bytes: 128, handle_type: 0, f_handle: [0; 128] };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: h is a file_handle with handle_bytes of space after its header;
    // the empty path with AT_EMPTY_PATH names the fd itself.
    let rc = unsafe {
        libc::name_to_handle_at(
            mount.as_raw_fd(),
            c"".as_ptr(),
            (&mut h as *mut FileHandle).cast::<libc::file_handle>(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    if rc != 0 || h.handle_bytes != 8 {
        return Ok(Handles::Unavailable);
    }
    let mut id = [0u8; 8];
    id.copy_from_slice(&h.f_handle[..8]);
    if u64::from_ne_bytes(id) != md.ino() {
        return Ok(Handles::Unavailable);
    }
    Ok(Handles::Ready {
        canon_root: fs::canonicalize(root)?,
        dev: md.dev(),
        handle_type: h.handle_type,
        mount,
    })
}

fn open_by_id(mount: &File, handle_type: i32, id: u64) -> io::Result<File> {
    let mut h = FileHandle { handle_bytes: 8, handle_type, f_handle: [0; 128] };
    h.f_handle[..8].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: h is a valid file_handle of handle_bytes payload; the kernel
    // returns a new fd or -1.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&mut h as *mut FileHandle).cast::<libc::file_handle>(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Every directory below `root` (and root itself, as "/"): (inode, path).
/// Symlinks, non-UTF-8 names, unreadable or vanished directories, other
/// filesystems and repeated inodes are skipped and counted. Only a root that
/// cannot be read is an error.
fn walk(root: &Path, skipped: &mut u64) -> io::Result<Vec<(u64, String)>> {
    let md = fs::metadata(root)?;
    if !md.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a directory", root.display()),
        ));
    }
    let dev = md.dev();
    let mut seen = std::collections::HashSet::from([md.ino()]);
    let mut out = vec![(md.ino(), "/".to_string())];
    // (directory, its relative path: "" for the root so children are "/name")
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if rel.is_empty() => return Err(e),
            Err(_) => {
                *skipped += 1;
                continue;
            }
        };
        for entry in entries {
            let Ok(entry) = entry else {
                // A readdir error ends this directory's listing.
                *skipped += 1;
                break;
            };
            let Ok(ft) = entry.file_type() else {
                *skipped += 1;
                continue;
            };
            if ft.is_symlink() {
                *skipped += 1;
                continue;
            }
            if !ft.is_dir() {
                continue; // cgroup interface files
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                *skipped += 1;
                continue;
            };
            let path = entry.path();
            // lstat, not d_ino: they differ on mount points and overlayfs.
            let Ok(md) = fs::symlink_metadata(&path) else {
                *skipped += 1; // vanished mid-walk, or no permission
                continue;
            };
            if !md.is_dir() || md.dev() != dev || !seen.insert(md.ino()) {
                *skipped += 1;
                continue;
            }
            let child = format!("{rel}/{name}");
            out.push((md.ino(), child.clone()));
            stack.push((path, child));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    const PURE_V2: &str = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 28 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
28 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw,discard,errors=remount-ro
31 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
32 22 0:27 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
33 22 0:28 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:11 - bpf bpf rw,mode=700
";

    // Hybrid (systemd legacy+unified), as on this kind of host.
    const HYBRID: &str = "\
23 28 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime shared:4 - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:5 - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/memory rw,relatime shared:7 - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime shared:13 - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:14 - cgroup2 cgroup2 rw
";

    const V1_ONLY: &str = "\
31 23 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:4 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:5 - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:6 - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn mountinfo_pure_cgroup2() {
        assert_eq!(find_cgroup2_root(PURE_V2), Some(PathBuf::from("/sys/fs/cgroup")));
    }

    #[test]
    fn mountinfo_hybrid() {
        assert_eq!(find_cgroup2_root(HYBRID), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn mountinfo_cgroup1_only() {
        assert_eq!(find_cgroup2_root(V1_ONLY), None);
        assert_eq!(find_cgroup2_root(""), None);
        assert_eq!(find_cgroup2_root("garbage\n1 2 3\n"), None);
    }

    #[test]
    fn mountinfo_escaped_path() {
        let t = "50 28 0:40 / /mnt/my\\040cgroups\\011x\\134y rw,relatime shared:20 - cgroup2 none rw\n";
        assert_eq!(find_cgroup2_root(t), Some(PathBuf::from("/mnt/my cgroups\tx\\y")));
        // A lone or short backslash stays as is.
        let t = "50 28 0:40 / /mnt/a\\b\\04 rw - cgroup2 none rw\n";
        assert_eq!(find_cgroup2_root(t), Some(PathBuf::from("/mnt/a\\b\\04")));
    }

    #[test]
    fn mountinfo_preferences() {
        // /sys/fs/cgroup wins even when listed after another cgroup2 mount.
        let t = "\
60 28 0:50 / /run/other rw - cgroup2 cgroup2 rw
31 22 0:26 / /sys/fs/cgroup rw shared:9 - cgroup2 cgroup2 rw
";
        assert_eq!(find_cgroup2_root(t), Some(PathBuf::from("/sys/fs/cgroup")));
        // A mount of the whole hierarchy wins over a bind of a subtree.
        let t = "\
60 28 0:26 /kubepods /run/sub rw - cgroup2 cgroup2 rw
61 28 0:26 / /mnt/cg rw - cgroup2 cgroup2 rw
";
        assert_eq!(find_cgroup2_root(t), Some(PathBuf::from("/mnt/cg")));
        // Over-mounted: the visible (last) mount on a mount point counts.
        let t = "\
31 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
70 31 0:60 / /sys/fs/cgroup rw - tmpfs tmpfs rw
";
        assert_eq!(find_cgroup2_root(t), None);
        // Optional fields of any count before the separator.
        let t = "31 22 0:26 / /cg rw shared:9 master:2 propagate_from:1 - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2_root(t), Some(PathBuf::from("/cg")));
    }

    #[test]
    fn mountinfo_non_utf8_point() {
        let t = b"41 31 0:38 / /mnt/\xff\\040x rw - cgroup2 cgroup2 rw\n";
        let p = find_cgroup2_root_bytes(t).unwrap();
        assert_eq!(p.as_os_str().as_bytes(), b"/mnt/\xff x");
    }

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn tempdir(tag: &str) -> TempDir {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let p =
            std::env::temp_dir().join(format!("imds-cgroup-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn ino(p: &Path) -> u64 {
        fs::symlink_metadata(p).unwrap().ino()
    }

    #[test]
    fn resolver_maps_inodes_to_relative_paths() {
        let t = tempdir("tree");
        let r = &t.0;
        let dirs =
            ["a", "a/b", "a/b/c", "libpod_parent", "libpod_parent/libpod-abc", "with space", "ünï"];
        for d in dirs {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::write(r.join("a/cgroup.procs"), "").unwrap();
        std::os::unix::fs::symlink(r.join("a"), r.join("link")).unwrap();
        let odd = r.join(std::ffi::OsStr::from_bytes(b"bad\xffname"));
        fs::create_dir(&odd).unwrap();
        fs::create_dir(odd.join("child")).unwrap();

        let mut res = CgroupResolver::new(r.clone());
        assert_eq!(res.resolve(ino(r)).as_deref(), Some("/"));
        assert_eq!(res.scans(), 1);
        for d in dirs {
            assert_eq!(res.resolve(ino(&r.join(d))), Some(format!("/{d}")), "{d}");
        }
        assert_eq!(res.scans(), 1, "hits come from the cache");
        // The symlink and the non-UTF-8 directory are skipped (and counted);
        // the latter's child is not reached. Files are not entries.
        assert_eq!(res.skipped(), 2);
        assert_eq!(res.len(), dirs.len() + 1);
        assert_eq!(res.resolve(ino(&r.join("a/cgroup.procs"))), None);
        assert_eq!(res.resolve(ino(&odd.join("child"))), None);
    }

    #[test]
    fn cgroups_learned_at_creation_need_no_walk() {
        let t = tempdir("learn");
        let mut res = CgroupResolver::new(t.0.clone());
        res.set_min_rescan_interval(Duration::from_secs(3600));
        // A temporary directory is a subtree: its paths are not the
        // hierarchy's, so nothing is learned.
        res.learn(4711, "/kubepods.slice/x");
        assert_eq!(res.len(), 0);
        res.hierarchy_root = Some(true);
        res.learn(4711, "/kubepods.slice/x");
        res.learn(4712, "relative/is/refused");
        // Gone already, never walked: still named.
        assert_eq!(res.resolve(4711).as_deref(), Some("/kubepods.slice/x"));
        assert_eq!(res.resolve(4712), None);
        assert_eq!(res.scans(), 1, "only the miss walked");
    }

    #[test]
    fn vanished_cgroup_keeps_its_path() {
        let t = tempdir("gone");
        let r = &t.0;
        fs::create_dir_all(r.join("pod/ctr")).unwrap();
        fs::create_dir_all(r.join("keep")).unwrap();
        let ctr = ino(&r.join("pod/ctr"));
        let mut res = CgroupResolver::new(r.clone());
        res.set_min_rescan_interval(Duration::ZERO);
        assert_eq!(res.resolve(ctr).as_deref(), Some("/pod/ctr"));
        fs::remove_dir(r.join("pod/ctr")).unwrap();
        assert_eq!(res.resolve(ctr).as_deref(), Some("/pod/ctr"));
        // Still there after a walk that no longer sees it...
        assert_eq!(res.rescan().unwrap(), 3);
        assert_eq!(res.resolve(ctr).as_deref(), Some("/pod/ctr"));
        // ...until forgotten.
        assert_eq!(res.forget_missing(1), 0);
        assert_eq!(res.forget_missing(0), 1);
        assert_eq!(res.resolve(ino(&r.join("keep"))).as_deref(), Some("/keep"));
        assert_eq!(res.len(), 3);
    }

    #[test]
    fn rescans_are_rate_limited() {
        let t = tempdir("rate");
        let r = &t.0;
        let mut res = CgroupResolver::new(r.clone());
        res.set_min_rescan_interval(Duration::from_secs(3600));
        assert_eq!(res.rescan().unwrap(), 1);
        fs::create_dir(r.join("new")).unwrap();
        let new = ino(&r.join("new"));
        // Within the interval: a miss does not walk.
        for _ in 0..1000 {
            assert_eq!(res.resolve(new), None);
            assert_eq!(res.resolve(u64::MAX), None);
        }
        assert_eq!(res.scans(), 1);
        // Past it: one walk finds the new cgroup.
        res.set_min_rescan_interval(Duration::ZERO);
        assert_eq!(res.resolve(new).as_deref(), Some("/new"));
        assert_eq!(res.scans(), 2);
        // An unknown id walks once, then is negatively cached.
        for _ in 0..1000 {
            assert_eq!(res.resolve(u64::MAX - 1), None);
        }
        assert_eq!(res.scans(), 3);
        // Distinct unknown ids walk at most once per interval.
        res.set_min_rescan_interval(Duration::from_secs(3600));
        for id in 0..10_000u64 {
            res.resolve(u64::MAX / 2 + id);
        }
        assert_eq!(res.scans(), 3);
        assert!(res.negative.len() <= NEGATIVE_MAX);
    }

    #[test]
    fn negative_entries_expire() {
        let t = tempdir("neg");
        let r = &t.0;
        let mut res = CgroupResolver::new(r.clone());
        res.set_min_rescan_interval(Duration::ZERO);
        res.set_negative_ttl(Duration::ZERO);
        assert_eq!(res.resolve(u64::MAX), None);
        assert_eq!(res.resolve(u64::MAX), None);
        assert_eq!(res.scans(), 2);
    }

    #[test]
    fn cache_is_bounded() {
        let t = tempdir("cap");
        let r = &t.0;
        for i in 0..40 {
            fs::create_dir(r.join(format!("c{i}"))).unwrap();
        }
        let mut res = CgroupResolver::with_capacity(r.clone(), 16);
        res.set_min_rescan_interval(Duration::ZERO);
        res.rescan().unwrap();
        assert!(res.len() <= 16, "{}", res.len());
        // Any live cgroup still resolves (a walk brings it back).
        for i in 0..40 {
            let p = format!("c{i}");
            assert_eq!(res.resolve(ino(&r.join(&p))), Some(format!("/{p}")));
            assert!(res.len() <= 16);
        }
    }

    #[test]
    fn eviction_takes_vanished_cgroups_first() {
        let t = tempdir("evict");
        let r = &t.0;
        let gone: Vec<u64> = (0..6)
            .map(|i| {
                let p = r.join(format!("g{i}"));
                fs::create_dir(&p).unwrap();
                ino(&p)
            })
            .collect();
        let mut res = CgroupResolver::with_capacity(r.clone(), 8);
        res.set_min_rescan_interval(Duration::from_secs(3600));
        for (i, &id) in gone.iter().enumerate() {
            assert_eq!(res.resolve(id), Some(format!("/g{i}")));
        }
        // New ones first: a plain filesystem reuses freed inodes at once
        // (kernfs ids carry a generation and are not reused).
        for i in 0..6 {
            fs::create_dir(r.join(format!("l{i}"))).unwrap();
        }
        for i in 0..6 {
            fs::remove_dir(r.join(format!("g{i}"))).unwrap();
        }
        // 7 cached + 6 new = 13 > 8: down to 7, the 6 vanished ones first,
        // although they were used more recently.
        assert_eq!(res.rescan().unwrap(), 7);
        assert_eq!(res.len(), 7);
        let scans = res.scans();
        for i in 0..6 {
            assert_eq!(res.resolve(ino(&r.join(format!("l{i}")))), Some(format!("/l{i}")));
        }
        assert_eq!(res.scans(), scans, "all live cgroups still cached");
        for &id in &gone {
            assert_eq!(res.resolve(id), None);
        }
    }

    #[test]
    fn missing_root_is_not_a_panic() {
        let mut res = CgroupResolver::new(PathBuf::from("/nonexistent/imds-observer-test"));
        assert_eq!(res.resolve(1), None);
        assert!(res.rescan().is_err());
        assert_eq!(res.skipped(), 1);
    }

    #[test]
    fn this_hosts_cgroup2_root_resolves_to_slash() {
        let Ok(Some(root)) = detect_cgroup2_root() else {
            eprintln!("no cgroup2 mount here; skipped");
            return;
        };
        let Ok(md) = fs::metadata(&root) else {
            eprintln!("{} unreadable; skipped", root.display());
            return;
        };
        let mut res = CgroupResolver::new(root.clone());
        assert_eq!(res.resolve(md.ino()).as_deref(), Some("/"));
        // And whatever lies below resolves to its own path.
        if let Ok(rd) = fs::read_dir(&root) {
            for e in rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).take(20) {
                let Ok(md) = fs::symlink_metadata(e.path()) else { continue };
                let want = format!("/{}", e.file_name().to_string_lossy());
                assert_eq!(res.resolve(md.ino()), Some(want));
            }
        }
        eprintln!(
            "{}: {} walks, handles {:?}",
            root.display(),
            res.scans(),
            matches!(res.handles, Handles::Ready { .. })
        );
    }
}
