//! The data directory's lock: `rollbackd.lock` in it, write-locked (`fcntl`) for as long as the
//! daemon runs and holding the daemon's pid. `serve` takes it before it binds its listener, so a
//! second daemon on the same directory stops before it says it listens, and says which process
//! holds the directory (the kernel's answer, else the pid written in the file).

use std::fs::File;
use std::path::{Path, PathBuf};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "rollbackd.lock";

/// Held while alive; the lock goes when the process ends, however it ends.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data directory {dir} is in use by another rollbackd (pid {pid}, lock file {file}); stop that process or give this one another data_dir"
    )]
    Held {
        dir: String,
        file: String,
        pid: String,
    },
    #[error("cannot lock the data directory {dir}: {err}")]
    Io { dir: String, err: std::io::Error },
}

/// Creates `dir` if needed and takes its lock, writing this process's pid into the lock file.
pub fn lock(dir: &Path) -> Result<DataDirLock, LockError> {
    let io = |err| LockError::Io {
        dir: dir.display().to_string(),
        err,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match imp::try_lock(&file) {
        Ok(imp::Outcome::Locked) => {}
        Ok(imp::Outcome::HeldBy(pid)) => {
            let pid = pid
                .map(|p| p.to_string())
                .or_else(|| {
                    std::fs::read_to_string(&path)
                        .ok()
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()))
                })
                .unwrap_or_else(|| "unknown".to_string());
            return Err(LockError::Held {
                dir: dir.display().to_string(),
                file: path.display().to_string(),
                pid,
            });
        }
        Err(e) => return Err(io(e)),
    }
    write_pid(&file).map_err(io)?;
    Ok(DataDirLock { _file: file, path })
}

fn write_pid(mut file: &File) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    file.set_len(0)?;
    file.rewind()?;
    writeln!(file, "{}", std::process::id())?;
    file.sync_all()
}

#[cfg(unix)]
mod imp {
    use std::fs::File;
    use std::os::fd::AsRawFd;

    pub enum Outcome {
        Locked,
        /// Held by another process: its pid when the kernel says it.
        HeldBy(Option<u32>),
    }

    fn whole_file(kind: libc::c_short) -> libc::flock {
        // SAFETY: `flock` is a plain C struct; all-zero is a valid value of it.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = 0;
        fl.l_len = 0;
        fl
    }

    pub fn try_lock(file: &File) -> std::io::Result<Outcome> {
        let fd = file.as_raw_fd();
        let mut fl = whole_file(libc::F_WRLCK as libc::c_short);
        // SAFETY: `fd` is an open descriptor owned by `file`; `fl` outlives the call.
        if unsafe { libc::fcntl(fd, libc::F_SETLK, &fl) } == 0 {
            return Ok(Outcome::Locked);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => {}
            _ => return Err(err),
        }
        // SAFETY: as above; F_GETLK writes the conflicting lock (and its owner) into `fl`.
        let asked = unsafe { libc::fcntl(fd, libc::F_GETLK, &mut fl) };
        let pid = (asked == 0 && fl.l_type != libc::F_UNLCK as libc::c_short && fl.l_pid > 0)
            .then_some(fl.l_pid as u32);
        Ok(Outcome::HeldBy(pid))
    }
}

#[cfg(not(unix))]
mod imp {
    pub enum Outcome {
        Locked,
        #[allow(dead_code)]
        HeldBy(Option<u32>),
    }

    pub fn try_lock(_file: &std::fs::File) -> std::io::Result<Outcome> {
        Ok(Outcome::Locked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_file_holds_the_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let held = lock(&data).expect("lock");
        let text = std::fs::read_to_string(&held.path).expect("read");
        assert_eq!(text.trim(), std::process::id().to_string());
    }
}
