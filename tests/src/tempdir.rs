//! Scratch directories for the config files and logs a test's own processes
//! write, so nothing lands in /etc, /var or /run and nothing outlives the test.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory of its own per use, removed on drop.
pub struct TempDir(PathBuf);

/// Tells apart the directories one test binary makes (tests run in parallel).
static NEXT: AtomicU32 = AtomicU32::new(0);

impl TempDir {
    /// Creates `sockhive-<name>-...` under the system temp directory; the
    /// name says which test left it, should a killed run leave it behind.
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "sockhive-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// The directory, to hand to a program as its prefix.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `relative` (creating its directories) and returns its
    /// path, since the caller usually passes the file on to a program.
    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.0.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create dir");
        }
        std::fs::write(&path, text).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::TempDir;

    #[test]
    fn each_dir_is_its_own_and_is_removed_on_drop() {
        let first = TempDir::new("unit");
        let second = TempDir::new("unit");
        assert_ne!(first.path(), second.path());
        let file = first.write("a/b.txt", "text");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "text");
        let path = first.path().to_path_buf();
        drop(first);
        assert!(!path.exists());
        assert!(second.path().is_dir());
    }
}
