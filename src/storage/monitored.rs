//! [`Monitored`]: the configured store, recording what each real operation found, so health
//! reports the last write's outcome instead of a guess.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use super::{ObjectInfo, ObjectStore, Put, StorageError};

/// The storage state `/api/health` reports: what the last real operation found.
///
/// - Only a write decides that storage is `ok`: a successful upload, or a check (which writes
///   a probe on the remote backends). A read that succeeds (the HEAD before an upload, a
///   listing) proves nothing about writes, so it never turns a failure into `ok`.
/// - Any call can show a failure: unreachable, refused credentials, a server error.
/// - A refusal of one object (too large, a duplicate) says nothing about the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageState {
    /// Not checked yet.
    Unchecked,
    /// The start-up check is running (uploads and reads do not wait for it).
    Checking,
    /// The last write (or check) succeeded.
    Ok,
    /// Storage answered, but refused our credentials or bucket (fix the settings).
    Refused(String),
    /// Storage did not answer, or answered with a server error.
    Unreachable(String),
    /// A local I/O error (permissions, disk full, ...).
    Failing(String),
}

impl StorageState {
    /// The word `/api/health` shows, and the reason beside it.
    pub fn word_and_reason(&self) -> (&'static str, Option<&str>) {
        match self {
            StorageState::Unchecked => ("unchecked", None),
            StorageState::Checking => ("checking", None),
            StorageState::Ok => ("ok", None),
            StorageState::Refused(r) => ("refused", Some(r)),
            StorageState::Unreachable(r) => ("unreachable", Some(r)),
            StorageState::Failing(r) => ("failing", Some(r)),
        }
    }

    fn is_failure(&self) -> bool {
        matches!(
            self,
            StorageState::Refused(_) | StorageState::Unreachable(_) | StorageState::Failing(_)
        )
    }

    /// The state a write's outcome (or a check's) shows, or None when it says nothing about
    /// the store as a whole (one object refused).
    fn after_write<T>(result: &Result<T, StorageError>) -> Option<StorageState> {
        match result {
            Ok(_) => Some(StorageState::Ok),
            // Any other refusal of a write (a missing bucket, a MIME type the bucket refuses,
            // a region it does not serve) fails every upload until the settings change.
            Err(StorageError::Rejected { status, message }) if *status < 500 => {
                Some(StorageState::Refused(message.clone()))
            }
            Err(e) => Self::after_failure(e),
        }
    }

    /// The state a read's outcome shows: only a failure says anything.
    fn after_read<T>(result: &Result<T, StorageError>) -> Option<StorageState> {
        result.as_ref().err().and_then(Self::after_failure)
    }

    fn after_failure(e: &StorageError) -> Option<StorageState> {
        match e {
            StorageError::Unavailable(m) => Some(StorageState::Unreachable(m.clone())),
            StorageError::Rejected { status, message } => match status {
                401 | 403 => Some(StorageState::Refused(message.clone())),
                500.. => Some(StorageState::Unreachable(format!(
                    "HTTP {status}: {message}"
                ))),
                _ => None,
            },
            StorageError::Unusable(m) => Some(StorageState::Refused(m.clone())),
            StorageError::Io(e) => Some(StorageState::Failing(e.to_string())),
            StorageError::ObjectRefused { .. }
            | StorageError::Unreadable(_)
            | StorageError::Unsupported(_) => None,
        }
    }
}

/// Wraps a store and records the outcome of every call in a [`StorageState`].
pub struct Monitored {
    inner: Arc<dyn ObjectStore>,
    state: Mutex<(StorageState, Instant)>,
    /// A background re-check is running: one at a time, however many ask.
    checking: AtomicBool,
    /// Counts every call that failed (`storage_errors_total`), if set.
    errors: Option<prometheus::IntCounter>,
    /// Private mode's finding: 0 not checked, 1 anonymous reads refused, 2 anyone can read.
    exposure: std::sync::atomic::AtomicU8,
}

impl Monitored {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Monitored {
        Monitored {
            inner,
            state: Mutex::new((StorageState::Unchecked, Instant::now())),
            checking: AtomicBool::new(false),
            errors: None,
            exposure: std::sync::atomic::AtomicU8::new(0),
        }
    }

    /// Records whether anyone can read this store's objects without a signature.
    pub fn set_readable_anonymously(&self, readable: bool) {
        self.exposure
            .store(if readable { 2 } else { 1 }, Ordering::Release);
    }

    /// Whether anyone can read this store's objects without a signature; None: not checked.
    pub fn readable_anonymously(&self) -> Option<bool> {
        match self.exposure.load(Ordering::Acquire) {
            0 => None,
            n => Some(n == 2),
        }
    }

    /// Counts each failed call on `errors`.
    pub fn counting_errors(mut self, errors: prometheus::IntCounter) -> Monitored {
        self.errors = Some(errors);
        self
    }

    /// Runs [`ObjectStore::check`] on a blocking thread unless one is already running.
    pub fn recheck_in_background(self: &Arc<Self>) {
        if self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(crate::blocking::run(move || {
            let _ = this.check();
            this.checking.store(false, Ordering::Release);
        }));
    }

    /// The last known state, and how long ago it was learnt.
    pub fn state(&self) -> (StorageState, Duration) {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (g.0.clone(), g.1.elapsed())
    }

    /// Records what a call that began at `started` found. A success does not replace a failure
    /// learnt while it was under way: that failure came from a concurrent call (an upload's
    /// other variant, written at the same time), and the success says nothing about it.
    fn record<T>(
        &self,
        started: Instant,
        result: Result<T, StorageError>,
        judge: fn(&Result<T, StorageError>) -> Option<StorageState>,
    ) -> Result<T, StorageError> {
        if result.is_err()
            && let Some(errors) = &self.errors
        {
            errors.inc();
        }
        if let Some(state) = judge(&result) {
            let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let failed_meanwhile = g.0.is_failure() && g.1 > started;
            if !(state == StorageState::Ok && failed_meanwhile) {
                *g = (state, Instant::now());
            }
        }
        result
    }

    fn set(&self, state: StorageState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (state, Instant::now());
    }

    /// Marks the start-up check as running: health says `checking` until it ends.
    pub fn checking(&self) {
        self.set(StorageState::Checking);
    }
}

impl ObjectStore for Monitored {
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<Put, StorageError> {
        let started = Instant::now();
        self.record(
            started,
            self.inner.put_new(key, bytes),
            StorageState::after_write,
        )
    }
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let started = Instant::now();
        self.record(started, self.inner.delete(key), StorageState::after_read)
    }
    fn exists(&self, key: &str) -> Result<bool, StorageError> {
        let started = Instant::now();
        self.record(started, self.inner.exists(key), StorageState::after_read)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let started = Instant::now();
        self.record(started, self.inner.get(key), StorageState::after_read)
    }
    fn public_url(&self, key: &str) -> String {
        self.inner.public_url(key)
    }
    fn signed_urls(&self, keys: &[&str], lifetime: Duration) -> Result<Vec<String>, StorageError> {
        let started = Instant::now();
        self.record(
            started,
            self.inner.signed_urls(keys, lifetime),
            StorageState::after_read,
        )
    }
    fn accepts_key(&self, key: &str) -> bool {
        self.inner.accepts_key(key)
    }
    fn settle_time(&self) -> Duration {
        self.inner.settle_time()
    }
    /// The check's outcome always replaces the state: any refusal of it is the store's.
    fn check(&self) -> Result<(), StorageError> {
        let result = self.inner.check();
        let state = match &result {
            Err(StorageError::ObjectRefused { message, .. }) => {
                StorageState::Refused(message.clone())
            }
            other => StorageState::after_write(other)
                .unwrap_or_else(|| StorageState::Refused(other_reason(other))),
        };
        self.set(state);
        result
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn list(&self, progress: &mut dyn FnMut(usize)) -> Result<Vec<ObjectInfo>, StorageError> {
        let started = Instant::now();
        self.record(started, self.inner.list(progress), StorageState::after_read)
    }
}

fn other_reason<T>(result: &Result<T, StorageError>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store whose every answer the test sets.
    #[derive(Default)]
    struct Scripted {
        put: Mutex<Option<Result<Put, StorageError>>>,
        read: Mutex<Option<Result<bool, StorageError>>>,
        check: Mutex<Option<Result<(), StorageError>>>,
    }

    fn take<T>(slot: &Mutex<Option<Result<T, StorageError>>>) -> Result<T, StorageError> {
        slot.lock().unwrap().take().expect("the test set an answer")
    }

    impl ObjectStore for Scripted {
        fn put_new(&self, _: &str, _: &[u8]) -> Result<Put, StorageError> {
            take(&self.put)
        }
        fn delete(&self, _: &str) -> Result<(), StorageError> {
            take(&self.read).map(|_| ())
        }
        fn exists(&self, _: &str) -> Result<bool, StorageError> {
            take(&self.read)
        }
        fn get(&self, _: &str) -> Result<Option<Vec<u8>>, StorageError> {
            take(&self.read).map(|_| None)
        }
        fn list(&self, _: &mut dyn FnMut(usize)) -> Result<Vec<ObjectInfo>, StorageError> {
            take(&self.read).map(|_| Vec::new())
        }
        fn public_url(&self, key: &str) -> String {
            key.into()
        }
        fn check(&self) -> Result<(), StorageError> {
            take(&self.check)
        }
    }

    fn rejected(status: u16) -> StorageError {
        StorageError::Rejected {
            status,
            message: format!("said {status}"),
        }
    }

    fn word(m: &Monitored) -> String {
        let (state, _) = m.state();
        let (word, reason) = state.word_and_reason();
        format!(
            "{word}{}",
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        )
    }

    #[test]
    fn a_success_does_not_hide_a_failure_learnt_while_it_was_under_way() {
        let inner = Arc::new(Scripted::default());
        let m = Monitored::new(inner.clone());
        let put = |r: Result<Put, StorageError>| *inner.put.lock().unwrap() = Some(r);
        // An upload's two variants written at once: the thumb's write starts first, the medium's
        // fails (the disk is full), then the thumb's answers that it was stored.
        let thumb_started = Instant::now();
        while Instant::now() == thumb_started {}
        put(Err(StorageError::Io(std::io::Error::from_raw_os_error(28))));
        assert!(m.put_new("medium--a.jpg", b"").is_err());
        let failing = word(&m);
        assert!(failing.starts_with("failing: "), "{failing}");
        let _ = m.record(thumb_started, Ok(Put::Created), StorageState::after_write);
        assert_eq!(
            word(&m),
            failing,
            "the thumb's success says nothing about the disk"
        );
        // A failure is news whenever it comes, and a write begun after the failure was learnt
        // shows that storage works again.
        put(Err(rejected(403)));
        assert!(m.put_new("b.jpg", b"").is_err());
        assert_eq!(word(&m), "refused: said 403");
        put(Ok(Put::Created));
        m.put_new("c.jpg", b"").unwrap();
        assert_eq!(word(&m), "ok");
        // Nor does a check that began while a write was under way hold back the write's
        // success: only a failure is kept.
        let started = Instant::now();
        while Instant::now() == started {}
        m.checking();
        put(Ok(Put::Created));
        let _ = m.record(
            started,
            m.inner.put_new("e.jpg", b""),
            StorageState::after_write,
        );
        assert_eq!(word(&m), "ok");
        // A success begun before a success is no news either way.
        let started = Instant::now();
        put(Ok(Put::Created));
        m.put_new("d.jpg", b"").unwrap();
        let _ = m.record(started, Ok(Put::Created), StorageState::after_write);
        assert_eq!(word(&m), "ok");
    }

    #[test]
    fn only_writes_and_checks_make_storage_ok_and_any_call_can_show_a_failure() {
        let inner = Arc::new(Scripted::default());
        let m = Monitored::new(inner.clone());
        assert_eq!(word(&m), "unchecked");
        m.checking();
        assert_eq!(word(&m), "checking");
        let read = |r: Result<bool, StorageError>| *inner.read.lock().unwrap() = Some(r);
        let put = |r: Result<Put, StorageError>| *inner.put.lock().unwrap() = Some(r);

        // A missing bucket: the HEAD before the write says "no such key", the write is refused.
        read(Ok(false));
        assert!(!m.exists("a.jpg").unwrap());
        assert_eq!(word(&m), "checking", "a read proves nothing about writes");
        put(Err(rejected(404)));
        assert!(m.put_new("a.jpg", b"").is_err());
        assert_eq!(word(&m), "refused: said 404");
        // A HEAD that finds an object (a 409 for the upload) does not hide the refusal, nor
        // does any other read that succeeds.
        for call in [
            &|m: &Monitored| m.exists("b.jpg").map(|_| ()),
            &|m: &Monitored| m.get("b.jpg").map(|_| ()),
            &|m: &Monitored| m.delete("b.jpg"),
            &|m: &Monitored| m.list(&mut |_| {}).map(|_| ()),
        ] as [&dyn Fn(&Monitored) -> Result<(), StorageError>; 4]
        {
            read(Ok(true));
            call(&m).unwrap();
            assert_eq!(word(&m), "refused: said 404");
        }
        // Only a write that succeeds (a duplicate is an answer too) makes it ok.
        put(Ok(Put::AlreadyExists));
        m.put_new("a.jpg", b"").unwrap();
        assert_eq!(word(&m), "ok");

        // Failures of reads show.
        for (answer, want) in [
            (rejected(403), "refused: said 403"),
            (rejected(401), "refused: said 401"),
            (rejected(503), "unreachable: HTTP 503: said 503"),
            (
                StorageError::Unavailable("timed out".into()),
                "unreachable: timed out",
            ),
            (
                StorageError::Unusable("overwrites".into()),
                "refused: overwrites",
            ),
            (
                StorageError::Io(std::io::Error::other("disk full")),
                "failing: disk full",
            ),
        ] {
            put(Ok(Put::Created));
            m.put_new("a.jpg", b"").unwrap();
            read(Err(answer));
            assert!(m.exists("a.jpg").is_err());
            assert_eq!(word(&m), want);
        }
        // A refusal of one object, or of one read, says nothing about the store.
        put(Ok(Put::Created));
        m.put_new("a.jpg", b"").unwrap();
        for answer in [
            rejected(404),
            rejected(400),
            StorageError::ObjectRefused {
                status: 413,
                message: "too large".into(),
            },
            StorageError::Unreadable("a listing".into()),
            StorageError::Unsupported("list its objects"),
        ] {
            read(Err(answer));
            assert!(m.exists("a.jpg").is_err());
            assert_eq!(word(&m), "ok");
        }
        put(Err(StorageError::ObjectRefused {
            status: 413,
            message: "too large".into(),
        }));
        assert!(m.put_new("big.jpg", b"").is_err());
        assert_eq!(word(&m), "ok", "one photo too large");
        // A write refused for any other reason below 500 is the store's refusal; 5xx and
        // time-outs are unreachable.
        for (answer, want) in [
            (rejected(415), "refused: said 415"),
            (rejected(400), "refused: said 400"),
            (rejected(500), "unreachable: HTTP 500: said 500"),
            (StorageError::Unavailable("cut".into()), "unreachable: cut"),
        ] {
            put(Err(answer));
            assert!(m.put_new("a.jpg", b"").is_err());
            assert_eq!(word(&m), want);
        }
    }

    #[test]
    fn a_check_always_decides_the_state() {
        let inner = Arc::new(Scripted::default());
        let m = Monitored::new(inner.clone());
        let check = |r: Result<(), StorageError>| *inner.check.lock().unwrap() = Some(r);
        for (answer, want) in [
            (Ok(()), "ok"),
            (Err(rejected(404)), "refused: said 404"),
            (
                Err(StorageError::ObjectRefused {
                    status: 415,
                    message: "mime type image/jpeg is not supported".into(),
                }),
                "refused: mime type image/jpeg is not supported",
            ),
            (
                Err(StorageError::Unreadable("x".into())),
                "refused: storage answered in a way this server cannot read: x",
            ),
            (Err(rejected(502)), "unreachable: HTTP 502: said 502"),
            (Ok(()), "ok"),
        ] {
            let ok = answer.is_ok();
            check(answer);
            assert_eq!(m.check().is_ok(), ok);
            assert_eq!(word(&m), want);
        }
    }
}
