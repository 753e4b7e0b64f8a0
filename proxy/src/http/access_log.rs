//! The fast path's access log: lines in the `tracing` format (`log_line.rs`), written to stderr
//! in batches.
//!
//! Why: through `tracing`'s formatter and one `write(2)` per line, the access log (on by
//! default: the default filter is `info`) cost ~5 µs of the ~28 µs of CPU a request took in
//! the second HTTP setup (`docs/benchmarks.md`, issue 17). Here a line is written by hand
//! straight into one shared buffer, and a thread writes the buffer out 50 ms after its first line (at
//! once past 64 KiB, or when the proxy is shutting down), as nginx's `access_log ... buffer=`
//! does. The text is what `tracing_subscriber::fmt` writes for the same event (without colour),
//! so the line looks the same whichever path served the request; lines of the fast path may
//! reach stderr up to 50 ms after other log lines written meanwhile. Measured: ~2 µs of the 5 saved, pinned.
//!
//! Whether lines are written at all is still the log filter's (`tracing::enabled!` on the
//! target `access`, level INFO), checked by the caller.

use std::io::Write;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

/// Past this, the writer that filled the buffer writes it out itself.
const FLUSH_AT: usize = 64 * 1024;
/// How long a line may wait in the buffer.
const DELAY: Duration = Duration::from_millis(50);

struct Log {
    buf: Mutex<Vec<u8>>,
    /// Signalled when a line lands in an empty buffer.
    filled: Condvar,
    /// Held while a batch is taken and written: batches reach stderr in order.
    out: Mutex<()>,
}

static LOG: OnceLock<&'static Log> = OnceLock::new();

/// The buffer, and its writer thread started on the first line.
fn log() -> &'static Log {
    LOG.get_or_init(|| {
        let log: &'static Log = Box::leak(Box::new(Log {
            buf: Mutex::new(Vec::with_capacity(FLUSH_AT + 1024)),
            filled: Condvar::new(),
            out: Mutex::new(()),
        }));
        let spawned = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || loop {
                {
                    let mut buf = log.buf.lock().unwrap_or_else(|e| e.into_inner());
                    while buf.is_empty() {
                        buf = log.filled.wait(buf).unwrap_or_else(|e| e.into_inner());
                    }
                }
                std::thread::sleep(DELAY);
                write_out(log);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no access-log writer thread: lines are written at once");
        }
        log
    })
}

/// Writes what the buffer holds to stderr.
fn write_out(log: &Log) {
    let _order = log.out.lock().unwrap_or_else(|e| e.into_inner());
    let batch = {
        let mut buf = log.buf.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *buf, Vec::with_capacity(FLUSH_AT + 1024))
    };
    if !batch.is_empty() {
        let _ = std::io::stderr().lock().write_all(&batch);
    }
}

/// Writes out the lines still buffered (at shutdown, so none is lost with the process).
pub fn flush() {
    if let Some(log) = LOG.get() {
        write_out(log);
    }
}

/// Appends the line `line` writes (ending in `\n`) straight into the buffer, under its lock (no
/// buffer of its own per line); `now_flush` writes the buffer out at once.
pub fn append_with(now_flush: bool, line: impl FnOnce(&mut Vec<u8>)) {
    let log = log();
    let full = {
        let mut buf = log.buf.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = buf.is_empty();
        line(&mut buf);
        if was_empty {
            log.filled.notify_one();
        }
        buf.len() >= FLUSH_AT
    };
    if full || now_flush {
        write_out(log);
    }
}
