//! `IMDS_OBSERVER_RECORD_DUMP=FILE`: every record the kernel hands over,
//! as it came (hook, snapshot length, snapshot), for the lab's check that
//! no reply body leaves the kernel. Request snapshots hold header values
//! (a token), so: debug builds only (the lab's; a release build ignores it
//! and says so), a new file (never an existing one, nor a symlink's
//! target), readable by its owner only.
use std::{io, os::unix::fs::OpenOptionsExt};

use anyhow::{Context, Result};
use tracing::warn;

/// The dump, if the environment asks for one.
pub fn open() -> Result<Option<io::BufWriter<std::fs::File>>> {
    open_path(std::env::var_os("IMDS_OBSERVER_RECORD_DUMP"))
}

fn open_path(path: Option<std::ffi::OsString>) -> Result<Option<io::BufWriter<std::fs::File>>> {
    let Some(path) = path else { return Ok(None) };
    if !cfg!(debug_assertions) {
        warn!(
            "IMDS_OBSERVER_RECORD_DUMP is ignored: raw records hold request headers; only debug builds dump them"
        );
        return Ok(None);
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| {
            format!("IMDS_OBSERVER_RECORD_DUMP: creating {} (a new file)", path.to_string_lossy())
        })?;
    warn!(file = %path.to_string_lossy(), "dumping raw records (a debugging aid: they hold request headers)");
    Ok(Some(io::BufWriter::new(f)))
}

/// One record: hook (1 byte), packet length and snapshot length (4 bytes
/// each, little endian), the snapshot.
pub fn write(out: &mut impl io::Write, rec: &observer_ebpf::Record) -> Result<()> {
    let n = (rec.snap_len as usize).min(rec.data.len());
    out.write_all(&[rec.hook])?;
    out.write_all(&rec.pkt_len.to_le_bytes())?;
    out.write_all(&(n as u32).to_le_bytes())?;
    out.write_all(&rec.data[..n])?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::open_path;

    #[test]
    fn the_dump_is_a_new_file_of_its_owner_never_a_symlink_or_an_old_file() {
        let dir = std::env::temp_dir().join(format!("imds-dump-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("dump");
        assert!(open_path(Some(path.clone().into())).unwrap().is_some());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // It exists now: not truncated, not appended to.
        assert!(open_path(Some(path.clone().into())).is_err());
        let target = dir.join("elsewhere");
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_path(Some(link.into())).is_err());
        assert!(!target.exists(), "the symlink's target was created");
        assert!(open_path(None).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
