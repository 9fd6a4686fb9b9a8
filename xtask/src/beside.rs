//! Work that runs beside a longer stage of `cargo xtask test` (the fuzz
//! stage beside the host lab, the arm64 build beside the checks): a child
//! at the lowest CPU priority, its output in a log under target/, waited
//! for when its result is needed, stopped if never waited for.
use std::{
    fs,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::root_dir;

pub struct Beside {
    what: &'static str,
    /// None once waited for.
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl Beside {
    /// Start `cmd` niced, its stdout and stderr in target/<log>.
    pub fn start(what: &'static str, cmd: &Command, log: &str) -> Result<Self> {
        let log = root_dir().join("target").join(log);
        fs::create_dir_all(log.parent().unwrap())?;
        let mut niced = Command::new("nice");
        niced
            .args(["-n", "19"])
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .current_dir(root_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::from(fs::File::create(&log)?))
            .stderr(Stdio::from(fs::File::options().append(true).open(&log)?));
        eprintln!("+ {niced:?} ({what}, beside; output in {})", log.display());
        let child = niced.spawn().with_context(|| format!("running {niced:?}"))?;
        Ok(Beside { what, child: Some(child), log })
    }

    /// Wait for it; print the log's lines `shown` picks, or its last 60
    /// when it failed.
    pub fn wait(mut self, shown: impl Fn(&str) -> bool) -> Result<()> {
        let ok = self.child.take().expect("not waited for yet").wait()?.success();
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let lines = if ok {
            lines.into_iter().filter(|l| shown(l)).collect::<Vec<_>>()
        } else {
            lines[lines.len().saturating_sub(60)..].to_vec()
        };
        for l in lines {
            println!("{l}");
        }
        if !ok {
            bail!("{} failed (its log: {})", self.what, self.log.display());
        }
        Ok(())
    }
}

/// Not waited for (the stage before it failed): stop it.
impl Drop for Beside {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
