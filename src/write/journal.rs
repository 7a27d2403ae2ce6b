//! The clean-up journal: objects that may exist in storage without a row, written down on disk
//! before they can exist, so that no crash, outage or late write leaves one behind.
//!
//! Before an upload stores an object it records the key here (a small file, fsynced, in
//! `storage.journal_dir`). When the upload ends cleanly the entry is removed. When its outcome is
//! unknown (the commit failed, or the storage write timed out, was cut, or got a 5xx and may
//! still land) the entry stays, with the times it must be checked at, and the uploader's
//! resolver checks it then, whether the process was restarted meanwhile or not:
//!
//! - it claims the name in the database the way an upload does (a row inserted in a transaction
//!   that is always rolled back), which waits for any upload of that name still in flight;
//! - if the name is taken by a committed row, the object is that row's photo: kept, entry dropped;
//! - otherwise it deletes the object (while holding the claim, so it can only be ours), and keeps
//!   the entry for its remaining checks, so a write that lands after the first delete is removed
//!   by a later one.
//!
//! One journal per process, on local disk. Several replicas each keep their own; a replica that
//! is gone for good takes its entries with it, and `portfolio-server reconcile` finds what they
//! would have removed.

use std::{
    collections::HashSet,
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// One photo whose objects may exist without its row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The photo's key, which is also the name its row claims.
    pub key: String,
    /// The photo's other objects (its variants), settled with it. Entries written before
    /// variants existed have none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
    /// The name the objects go with, when it is not `key` (a deleted row of the original,
    /// whose key kept its own spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// When to check it (Unix milliseconds), earliest first. The entry is dropped after the last.
    pub checks: Vec<u64>,
    /// Its file in the journal folder.
    #[serde(skip)]
    file: PathBuf,
}

impl Entry {
    /// The name whose claim decides the objects' fate.
    pub fn name(&self) -> &str {
        self.claim.as_deref().unwrap_or(&self.key)
    }

    /// The next check is due.
    pub fn is_due(&self, now_ms: u64) -> bool {
        self.checks.first().is_none_or(|&t| t <= now_ms)
    }
}

pub struct Journal {
    dir: PathBuf,
    /// Entries whose upload is still running in this process: the resolver leaves them alone
    /// (the upload settles them itself, or hands them over with [`Journal::release`]). After a
    /// crash this is empty, so every entry on disk is the resolver's.
    in_flight: Mutex<HashSet<PathBuf>>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Journal {
    /// Opens (creating) the journal folder.
    pub fn open(dir: &Path) -> io::Result<Journal> {
        fs::create_dir_all(dir)?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            in_flight: Mutex::new(HashSet::new()),
        })
    }

    /// Records `key`, a photo with further objects `also` (its variants), durably: when this
    /// returns, the entry survives a crash of the process or the machine. It is the caller's (in
    /// flight) until removed or released. The objects are about to be written to a store whose writes may land up to `settle` after their request failed:
    /// should the process die with a write in flight, the resolver checks the entry at once,
    /// then on the schedule of [`checks_after`], as it would after a live failure.
    pub fn record_with(&self, key: &str, also: &[String], settle: Duration) -> io::Result<Entry> {
        self.record_claimed(key, key, also, settle)
    }

    /// [`Journal::record_with`] for objects that go with the name `name` rather than `key`.
    pub fn record_claimed(
        &self,
        key: &str,
        name: &str,
        also: &[String],
        settle: Duration,
    ) -> io::Result<Entry> {
        let now = now_ms();
        let file = self.dir.join(format!(
            "{}.{}-{}-{}.json",
            file_stem(key),
            now,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let entry = Entry {
            key: key.to_string(),
            also: also.to_vec(),
            claim: (name != key).then(|| name.to_string()),
            checks: checks_after(settle)
                .iter()
                .map(|d| now + d.as_millis() as u64)
                .collect(),
            file,
        };
        self.in_flight
            .lock()
            .expect("not poisoned")
            .insert(entry.file.clone());
        if let Err(e) = self.write(&entry) {
            self.release(&entry);
            return Err(e);
        }
        Ok(entry)
    }

    /// Hands an entry over to the resolver.
    pub fn release(&self, entry: &Entry) {
        self.in_flight
            .lock()
            .expect("not poisoned")
            .remove(&entry.file);
    }

    /// Rewrites an entry (its checks changed), atomically and durably.
    pub fn write(&self, entry: &Entry) -> io::Result<()> {
        let tmp = entry.file.with_extension("tmp");
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(entry).map_err(io::Error::other)?)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &entry.file)?;
        sync_dir(&self.dir)
    }

    /// Schedules the entry's checks `after` from now (the first due at once), and writes it.
    pub fn reschedule(&self, entry: &mut Entry, after: &[Duration]) -> io::Result<()> {
        let now = now_ms();
        entry.checks = after.iter().map(|d| now + d.as_millis() as u64).collect();
        self.write(entry)
    }

    /// Removes an entry: its object is accounted for. Not synced: should the removal be lost
    /// in a crash, the resolver finds the object's row and drops the entry again (one fsync
    /// less per upload; on this machine each costs about 11 ms: (3.5 s - 1.3 s) / 200 fsyncs for a
    /// batch of 100, bench/results.md).
    pub fn remove(&self, entry: &Entry) -> io::Result<()> {
        self.release(entry);
        match fs::remove_file(&entry.file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// [`Journal::remove`], logging a failure instead of returning it: the resolver finds the
    /// row later and drops the entry then.
    pub fn forget(&self, entry: &Entry) {
        if let Err(e) = self.remove(entry) {
            tracing::warn!(key = %entry.key, error = %e, "cannot remove a journal entry");
        }
    }

    /// [`Journal::remove`], synced: for an entry whose object is not ours, where a lost removal
    /// could later delete someone else's object.
    pub fn remove_synced(&self, entry: &Entry) -> io::Result<()> {
        self.remove(entry)?;
        sync_dir(&self.dir)
    }

    /// Every entry not in flight, oldest first. Unreadable files are skipped with a warning
    /// (never deleted: a person may want to look at them).
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut out = Vec::new();
        for item in fs::read_dir(&self.dir)? {
            let path = item?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json")
                || self.in_flight.lock().expect("not poisoned").contains(&path)
            {
                continue;
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Entry>(&b).map_err(|e| e.to_string()))
            {
                Ok(mut e) => {
                    e.file = path;
                    out.push(e);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "unreadable journal entry")
                }
            }
        }
        out.sort_by_key(|e| e.checks.first().copied().unwrap_or(0));
        Ok(out)
    }
}

/// When an entry whose write may still land is checked, from the moment its outcome became
/// unknown: at once, then after 1, 2 and 10 of the store's time-outs (`settle`), so a write
/// held by a slow gateway and landing late is removed by a later check. A store whose writes
/// cannot land late (a local folder) is checked once.
pub fn checks_after(settle: Duration) -> Vec<Duration> {
    if settle.is_zero() {
        vec![Duration::ZERO]
    } else {
        vec![Duration::ZERO, settle, settle * 2, settle * 10]
    }
}

/// A key as part of a file name: letters, digits and `-._` kept, anything else (a `/` in a key
/// of the original's, say) as `_`; at most 100 bytes. The entry's contents hold the key itself.
fn file_stem(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry for one object, settled at once.
    fn record(j: &Journal, key: &str) -> io::Result<Entry> {
        j.record_with(key, &[], Duration::ZERO)
    }

    #[test]
    fn entries_survive_reopening_and_go_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let a = record(&j, "a.jpg").unwrap();
        let mut b = record(&j, "b.jpg").unwrap();
        assert!(
            j.entries().unwrap().is_empty(),
            "in flight: not the resolver's yet"
        );
        j.reschedule(&mut b, &[Duration::ZERO, Duration::from_secs(60)])
            .unwrap();
        j.release(&a);
        j.release(&b);
        let again = Journal::open(dir.path()).unwrap();
        let keys: Vec<_> = again
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&"a.jpg".to_string()) && keys.contains(&"b.jpg".to_string()));
        let b2 = again
            .entries()
            .unwrap()
            .into_iter()
            .find(|e| e.key == "b.jpg")
            .unwrap();
        assert_eq!(b2.checks.len(), 2);
        assert!(b2.is_due(now_ms()));
        assert!(
            !Entry {
                checks: vec![now_ms() + 60_000],
                ..b2.clone()
            }
            .is_due(now_ms())
        );
        j.remove(&a).unwrap();
        j.remove(&a).unwrap(); // twice is fine
        let left: Vec<_> = again
            .entries()
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(left, ["b.jpg"]);
        // Only entries in the folder: no temporary files left behind.
        let files: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(files.len(), 1);
    }

    #[test]
    fn checks_are_scheduled_from_the_real_clock() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let real_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let mut e = record(&j, "t.jpg").unwrap();
        assert!(
            (e.checks[0] as i64 - real_now).abs() < 5_000,
            "{:?}",
            e.checks
        );
        j.reschedule(&mut e, &[Duration::from_secs(60), Duration::from_secs(600)])
            .unwrap();
        let (first, second) = (e.checks[0] as i64, e.checks[1] as i64);
        assert!((first - real_now - 60_000).abs() < 5_000, "{first}");
        assert!((second - real_now - 600_000).abs() < 5_000, "{second}");
        assert!(!e.is_due(now_ms()), "a check a minute away is not due");
        assert!(e.is_due(now_ms() + 61_000));
        j.release(&e);
    }

    #[test]
    fn removal_failures_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let e = record(&j, "x.jpg").unwrap();
        // Something that cannot be removed as a file: a directory in its place.
        fs::remove_file(&e.file).unwrap();
        fs::create_dir(&e.file).unwrap();
        assert!(j.remove(&e).is_err());
        fs::remove_dir(&e.file).unwrap();
        // Synced removal: gone, and an error when the folder itself is gone.
        let f = record(&j, "y.jpg").unwrap();
        j.remove_synced(&f).unwrap();
        assert!(!f.file.exists());
        let g = record(&j, "z.jpg").unwrap();
        fs::remove_file(&g.file).unwrap();
        fs::remove_dir(dir.path()).unwrap();
        assert!(j.remove_synced(&g).is_err(), "the folder cannot be synced");
    }

    #[test]
    fn a_photos_other_objects_are_recorded_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let also = vec!["thumb~v.jpg".to_string(), "medium~v.jpg".to_string()];
        let e = j.record_with("v.jpg", &also, Duration::ZERO).unwrap();
        j.release(&e);
        let read = Journal::open(dir.path()).unwrap().entries().unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!((read[0].key.as_str(), &read[0].also), ("v.jpg", &also));
        // An entry written before variants existed reads with none.
        fs::write(
            dir.path().join("old.1-2-3.json"),
            br#"{"key":"old.jpg","checks":[1]}"#,
        )
        .unwrap();
        let old = j
            .entries()
            .unwrap()
            .into_iter()
            .find(|e| e.key == "old.jpg")
            .unwrap();
        assert!(old.also.is_empty());
    }

    #[test]
    fn an_entry_whose_write_may_land_late_carries_every_check_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let before = now_ms();
        let e = j
            .record_with("late.jpg", &[], Duration::from_secs(60))
            .unwrap();
        let after = now_ms();
        let offsets: Vec<u64> = e.checks.iter().map(|t| t - before).collect();
        assert_eq!(offsets.len(), 4, "{offsets:?}");
        for (got, want) in offsets.iter().zip([0, 60_000, 120_000, 600_000]) {
            assert!(
                (want..=want + (after - before)).contains(got),
                "{offsets:?}"
            );
        }
        // As written to disk: what a restarted process reads.
        j.release(&e);
        let read = Journal::open(dir.path()).unwrap().entries().unwrap();
        assert_eq!(read[0].checks, e.checks);
        assert_eq!(checks_after(Duration::ZERO), [Duration::ZERO]);
        assert_eq!(record(&j, "local.jpg").unwrap().checks.len(), 1);
    }

    #[test]
    fn objects_that_go_with_another_name_keep_it() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let other = j
            .record_claimed("IMG_01.jpg", "sunset.jpg", &[], Duration::ZERO)
            .unwrap();
        assert_eq!(
            (other.claim.as_deref(), other.name()),
            (Some("sunset.jpg"), "sunset.jpg")
        );
        let same = j
            .record_claimed("a.jpg", "a.jpg", &[], Duration::ZERO)
            .unwrap();
        assert_eq!((same.claim.as_deref(), same.name()), (None, "a.jpg"));
        j.release(&other);
        j.release(&same);
        let read = Journal::open(dir.path()).unwrap().entries().unwrap();
        let names: std::collections::BTreeSet<&str> = read.iter().map(Entry::name).collect();
        assert_eq!(names, ["a.jpg", "sunset.jpg"].into());
    }

    #[test]
    fn any_key_makes_a_file_name_in_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let long = "x".repeat(300);
        for key in [
            "users/42/a b.jpg",
            "../../etc/passwd",
            "caf\u{e9}~1.jpg",
            &long,
        ] {
            let e = record(&j, key).unwrap();
            assert_eq!(e.file.parent(), Some(dir.path()), "{key}");
            assert!(e.file.file_name().unwrap().len() < 160, "{key}");
            j.release(&e);
        }
        let mut keys: Vec<String> = j.entries().unwrap().into_iter().map(|e| e.key).collect();
        keys.sort();
        let mut want = vec![
            "users/42/a b.jpg".to_string(),
            "../../etc/passwd".to_string(),
            "caf\u{e9}~1.jpg".to_string(),
            long.clone(),
        ];
        want.sort();
        assert_eq!(keys, want);
        assert_eq!(file_stem("a/b c~d.jpg"), "a_b_c_d.jpg");
    }

    #[test]
    fn two_entries_for_one_key_are_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let a = record(&j, "same.jpg").unwrap();
        let b = record(&j, "same.jpg").unwrap();
        assert_ne!(a.file, b.file);
        j.release(&a);
        j.release(&b);
        assert_eq!(j.entries().unwrap().len(), 2);
    }
}
