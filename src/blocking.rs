//! The one bridge from async code onto tokio's blocking threads. Everything that blocks (the
//! synchronous PostgreSQL driver, image checks, storage I/O, spooling files) goes through
//! [`run`], so that:
//! - the log lines it causes carry the request's span (its id, method and route), and
//! - a panic in the work becomes a [`Panicked`] error the caller reports as an internal error,
//!   never mistaken for "the database failed".

use tracing::Instrument;

/// The blocking work panicked (a bug). The message is for the log, not for clients.
#[derive(Debug, Clone, thiserror::Error)]
#[error("internal task failed: {0}")]
pub struct Panicked(pub String);

/// Runs CPU-heavy work (decoding and resizing photos) on a thread of its own at a lower CPU
/// priority (nice 10), inside the current span, and returns the memory it freed to the system. When uploads and reads compete for the cores,
/// reads win; alone, the work runs at full speed. Threads it starts inherit the priority.
/// Callers bound how many run at once.
pub async fn run_low_priority<T, F>(f: F) -> Result<T, Panicked>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("image-work".into())
        .spawn(move || {
            lower_priority();
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| span.in_scope(f)));
            let _ = tx.send(outcome.map_err(|payload| panic_message(&*payload)));
        });
    if let Err(e) = spawned {
        return Err(Panicked(format!("cannot start a thread: {e}")));
    }
    match rx.await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(message)) => {
            tracing::error!(error = %message, "image work panicked");
            Err(Panicked(message))
        }
        Err(_) => Err(Panicked("image work ended without an answer".into())),
    }
}

/// Allocations of this size and larger are mapped on their own and unmapped when freed.
pub const OWN_MAPPING_BYTES: usize = 1 << 20;

/// Has glibc map every allocation of [`OWN_MAPPING_BYTES`] or more on its own, so that freeing it
/// gives the memory back at once. By default glibc raises that threshold (up to 32 MiB) each time
/// such a buffer is freed, after which photos (3 MB files, decoded images of tens of MB) are
/// carved from its arenas and their memory stays counted in the RSS once freed. Measured on
/// batches of 60 photos of 3 MB (release, 4 in work at once, 2 rounds each): peak RSS growth
/// 54-61 MiB with this against 72-133 MiB without, and 35 MiB RSS after the batch against
/// 87-113 MiB, for 7 % fewer photos a second (22.2 against 23.8). Called once at start-up.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn map_large_buffers_on_their_own() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before any photo is read.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_BYTES as libc::c_int);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn map_large_buffers_on_their_own() {}

/// Gives the pages the allocator holds free back to the system (glibc keeps freed memory in
/// per-thread arenas; after a burst of connections or of photo buffers it would stay counted in
/// the RSS). Whether anything was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn return_freed_memory() -> bool {
    // SAFETY: malloc_trim only walks and releases the allocator's free lists; it takes no
    // pointers from us and is safe to call from any thread at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn return_freed_memory() -> bool {
    false
}

/// The nice value image work runs at, unless the process already runs nicer.
const IMAGE_NICE: libc::c_int = 10;

/// Nice [`IMAGE_NICE`] for the calling thread only (Linux keeps a nice value per thread); never
/// raises the priority of a process started with a higher nice value.
fn lower_priority() {
    // SAFETY: plain system calls on the calling thread; a failure only leaves the priority.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::getpriority(libc::PRIO_PROCESS, tid) < IMAGE_NICE {
            libc::setpriority(libc::PRIO_PROCESS, tid, IMAGE_NICE);
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Runs `f` on a blocking thread inside the current span.
pub async fn run<T, F>(f: F) -> Result<T, Panicked>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .in_current_span()
        .await
        .map_err(|e| {
            let message = match e.try_into_panic() {
                Ok(payload) => panic_message(&*payload),
                Err(e) => e.to_string(),
            };
            tracing::error!(error = %message, "blocking task panicked");
            Panicked(message)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn results_come_back_and_panics_become_errors() {
        assert_eq!(run(|| 2 + 2).await.unwrap(), 4);
        let e = run(|| -> u8 { panic!("boom") }).await.unwrap_err();
        assert_eq!(e.0, "boom");
        let e = run(|| -> u8 { panic!("{}", String::from("formatted")) })
            .await
            .unwrap_err();
        assert_eq!(e.0, "formatted");
    }

    #[tokio::test]
    async fn low_priority_work_runs_niced_and_reports_panics() {
        let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let nice = run_low_priority(|| unsafe {
            libc::getpriority(
                libc::PRIO_PROCESS,
                libc::syscall(libc::SYS_gettid) as libc::id_t,
            )
        })
        .await
        .unwrap();
        assert_eq!(nice, before.max(IMAGE_NICE), "nicer, never less nice");
        let e = run_low_priority(|| -> u8 { panic!("decoder bug") })
            .await
            .unwrap_err();
        assert_eq!(e.0, "decoder bug");
        let here = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(here, before, "the caller's priority is untouched");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_callers_span_is_current_on_the_blocking_thread() {
        use tracing_subscriber::util::SubscriberInitExt;
        // A global subscriber, so spans are enabled on every thread.
        let _ = tracing_subscriber::registry().try_init();
        let span = tracing::info_span!("request", id = 7);
        assert!(!span.is_disabled());
        let seen = run(|| tracing::Span::current().metadata().map(|m| m.name()))
            .instrument(span)
            .await
            .unwrap();
        assert_eq!(seen, Some("request"));
        let outside = run(|| tracing::Span::current().metadata().map(|m| m.name()))
            .await
            .unwrap();
        assert_eq!(outside, None, "no span leaks from one call to the next");
    }
}
