//! The local backend: files in a folder, served by `/media`.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use super::{ObjectInfo, ObjectStore, Put, StorageError, encode_key, signing::UrlKey};

/// Files in a folder. Keys are single path components (see [`crate::model::FileName`]).
pub struct LocalStore {
    dir: PathBuf,
    public_base_url: String,
    /// Private mode: the key `/media` URLs are signed with.
    url_key: Option<std::sync::Arc<UrlKey>>,
}

/// Makes each temporary file name of this process unique.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalStore {
    pub fn new(dir: &Path, public_base_url: &str) -> LocalStore {
        LocalStore {
            dir: dir.to_path_buf(),
            public_base_url: public_base_url.trim_end_matches('/').to_string(),
            url_key: None,
        }
    }

    /// The same store in private mode: its URLs are signed with `key`.
    pub fn signing_with(mut self, key: std::sync::Arc<UrlKey>) -> LocalStore {
        self.url_key = Some(key);
        self
    }

    /// The file of `key`: a single file name of at most 255 bytes without a NUL, not hidden.
    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        if key.is_empty()
            || key.len() > 255
            || key.contains(['/', '\\', '\0'])
            || key.starts_with('.')
        {
            return Err(StorageError::ObjectRefused {
                status: 400,
                message: format!("invalid key `{key}`"),
            });
        }
        Ok(self.dir.join(key))
    }
}

impl LocalStore {
    /// Removes `.upload-<pid>-<n>.tmp` and `.probe-<pid>-<n>.tmp` files whose process is gone
    /// (a crash or a kill between writing and linking). Files of live processes, this one and
    /// others sharing the folder, are left alone. How many went.
    pub fn remove_dead_temp_files(&self) -> io::Result<usize> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut removed = 0;
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            let pid = [".upload-", ".probe-"]
                .iter()
                .find_map(|p| name.strip_prefix(p))
                .filter(|_| name.ends_with(".tmp"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            let Some(pid) = pid else { continue };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                match fs::remove_file(self.dir.join(&name)) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }

    /// Opens a stored object for reading: a regular file directly in the folder, never through a
    /// symbolic link (which could point anywhere on the machine). None when there is no such
    /// object (or the name is not a key).
    pub fn open_object(&self, key: &str) -> io::Result<Option<(fs::File, fs::Metadata)>> {
        use std::os::unix::fs::OpenOptionsExt;
        let Ok(path) = self.path(key) else {
            return Ok(None);
        };
        let file = match fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            // ELOOP: the name is a symbolic link.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        Ok(meta.is_file().then_some((file, meta)))
    }
}

impl ObjectStore for LocalStore {
    /// Writes a temporary file, flushes it to disk, then hard-links it under its name. `link`
    /// fails if the name exists, so the final file appears whole and never replaces another.
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<Put, StorageError> {
        let target = self.path(key)?;
        fs::create_dir_all(&self.dir)?;
        let tmp = self.dir.join(format!(
            ".upload-{}-{}.tmp",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = fs::File::create_new(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::hard_link(&tmp, &target)
        })();
        let _ = fs::remove_file(&tmp);
        match result {
            Ok(()) => Ok(Put::Created),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Put::AlreadyExists),
            Err(e) => Err(e.into()),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        match fs::remove_file(self.path(key)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn exists(&self, key: &str) -> Result<bool, StorageError> {
        Ok(self.path(key)?.try_exists()?)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self.open_object(key)? {
            None => Ok(None),
            Some((mut file, meta)) => {
                use std::io::Read;
                let mut bytes = Vec::with_capacity(meta.len() as usize);
                file.read_to_end(&mut bytes)?;
                Ok(Some(bytes))
            }
        }
    }

    fn public_url(&self, key: &str) -> String {
        format!("{}/{}", self.public_base_url, encode_key(key))
    }

    fn signed_urls(
        &self,
        keys: &[&str],
        lifetime: std::time::Duration,
    ) -> Result<Vec<String>, StorageError> {
        let Some(url_key) = &self.url_key else {
            return Err(StorageError::Unsupported("sign URLs without a signing key"));
        };
        let now = super::signing::unix_now();
        Ok(keys
            .iter()
            .map(|k| {
                format!(
                    "{}?{}",
                    self.public_url(k),
                    url_key.query_for(k, now, lifetime)
                )
            })
            .collect())
    }

    fn accepts_key(&self, key: &str) -> bool {
        self.path(key).is_ok()
    }

    /// The folder exists (or can be made) and a file can be written in it. Temporary files
    /// left by processes that died while writing are removed on the way.
    fn check(&self) -> Result<(), StorageError> {
        fs::create_dir_all(&self.dir)?;
        match self.remove_dead_temp_files() {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                files = n,
                "removed temporary files of processes that died mid-write"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot look for stale temporary files"),
        }
        let probe = self.dir.join(format!(
            ".probe-{}-{}.tmp",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = fs::File::create(&probe).and_then(|f| f.sync_all());
        let _ = fs::remove_file(&probe);
        Ok(result?)
    }

    fn describe(&self) -> String {
        format!("folder {}", self.dir.display())
    }

    /// Regular files directly in the folder; names starting with `.` (temporary files, probes)
    /// and symbolic links are not objects, nor are names that are not UTF-8 (no key is; such
    /// a file is logged, since nothing here can name it to delete it). A missing folder is an
    /// error that names it: the setting is likely wrong.
    fn list(&self, progress: &mut dyn FnMut(usize)) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StorageError::Io(io::Error::new(
                    e.kind(),
                    format!(
                        "the folder {} does not exist (storage.local_dir, \
                         APP_STORAGE__LOCAL_DIR)",
                        self.dir.display()
                    ),
                )));
            }
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                tracing::warn!(
                    file = %entry.file_name().to_string_lossy(),
                    "a file whose name is not UTF-8 is not an object; left alone"
                );
                continue;
            };
            let meta = entry.metadata()?; // of the entry itself: a link is not followed
            if name.starts_with('.') || !meta.is_file() {
                continue;
            }
            out.push(ObjectInfo {
                key: name,
                modified: meta.modified().ok(),
            });
            if out.len() % 1000 == 0 {
                progress(out.len());
            }
        }
        progress(out.len());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_files_of_dead_processes_are_removed_and_no_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "http://x/media/");
        // PIDs are below 2^22 on Linux: this one belongs to no process.
        let dead = ".upload-99999999-3.tmp";
        let mine = format!(".upload-{}-1.tmp", std::process::id());
        let parent = format!(".probe-{}-2.tmp", std::os::unix::process::parent_id());
        for name in [
            dead,
            ".probe-99999998-1.tmp",
            &mine,
            &parent,
            "photo.jpg",
            ".upload-x.tmp",
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(store.remove_dead_temp_files().unwrap(), 2);
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![
            mine.clone(),
            parent.clone(),
            ".upload-x.tmp".into(),
            "photo.jpg".into(),
        ];
        want.sort();
        assert_eq!(left, want);
        store.check().unwrap();
        assert_eq!(store.remove_dead_temp_files().unwrap(), 0);
    }

    #[test]
    fn a_local_key_is_one_visible_file_name() {
        let store = LocalStore::new(Path::new("/srv/media"), "http://x/media");
        let longest = format!("{}.jpg", "a".repeat(251));
        assert_eq!(longest.len(), 255);
        for good in [
            "a.jpg",
            "thumb--a.jpg",
            "thumb~a.jpg",
            "a b.jpg",
            longest.as_str(),
        ] {
            assert_eq!(
                store.path(good).unwrap(),
                Path::new("/srv/media").join(good),
                "{good}"
            );
            assert!(store.accepts_key(good));
        }
        let too_long = format!("a{longest}");
        let far_too_long = "a".repeat(300);
        for bad in [
            "",
            too_long.as_str(),
            far_too_long.as_str(),
            "a/b.jpg",
            "a\\b.jpg",
            "a\0.jpg",
            ".hidden.jpg",
        ] {
            assert!(store.path(bad).is_err(), "{bad:?}");
            assert!(!store.accepts_key(bad));
        }
    }

    #[test]
    fn the_local_store_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path(), "http://x/media/");
        assert_eq!(store.put_new("a.jpg", b"one").unwrap(), Put::Created);
        assert_eq!(store.put_new("a.jpg", b"two").unwrap(), Put::AlreadyExists);
        assert_eq!(fs::read(dir.path().join("a.jpg")).unwrap(), b"one");
        assert!(store.exists("a.jpg").unwrap());
        store.delete("a.jpg").unwrap();
        store.delete("a.jpg").unwrap();
        assert!(!store.exists("a.jpg").unwrap());
        assert!(store.put_new("../x.jpg", b"").is_err());
        assert_eq!(store.public_url("a b.jpg"), "http://x/media/a%20b.jpg");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "no temporary files left behind");
    }
}
