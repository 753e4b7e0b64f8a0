//! The fast path's access log: lines in the `tracing` format, written to stderr in batches.
//!
//! Why: through `tracing`'s formatter and one `write(2)` per line, the access log (on by
//! default: the default filter is `info`) cost ~5 µs of the ~28 µs of CPU a request took in
//! the second HTTP setup (`docs/benchmarks.md`, issue 17). Here a line is formatted by hand
//! into one shared buffer, and a thread writes the buffer out 50 ms after its first line (at
//! once past 64 KiB, or when the proxy is shutting down), as nginx's `access_log ... buffer=`
//! does. The text is what `tracing_subscriber::fmt` writes for the same event (without colour),
//! so the line looks the same whichever path served the request; lines of the fast path may
//! reach stderr up to 50 ms after other log lines written meanwhile. Measured: ~2 µs of the 5 saved, pinned.
//!
//! Whether lines are written at all is still the log filter's (`tracing::enabled!` on the
//! target `access`, level INFO), checked by the caller.

use std::io::Write;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Appends one formatted line (ending in `\n`); `now_flush` writes the buffer out at once.
pub fn append(line: &[u8], now_flush: bool) {
    let log = log();
    let full = {
        let mut buf = log.buf.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = buf.is_empty();
        buf.extend_from_slice(line);
        if was_empty {
            log.filled.notify_one();
        }
        buf.len() >= FLUSH_AT
    };
    if full || now_flush {
        write_out(log);
    }
}

/// The start of a line as `tracing_subscriber::fmt` writes it without colour:
/// `2026-12-06T03:04:26.331893Z  INFO access: `.
pub fn line_start(out: &mut Vec<u8>, now: SystemTime) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, mo, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let _ = write!(
        out,
        "{y:04}-{mo:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z  INFO access: ",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_micros()
    );
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A `&str` field as `tracing` writes one (its `Debug`: quoted, escaped).
pub fn put_str(out: &mut Vec<u8>, name: &str, value: &str) {
    let _ = write!(out, "{name}={value:?} ");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_the_calendar() {
        // (seconds since the epoch, its RFC 3339 form)
        let cases = [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_798_600_000, "2026-12-30T03:06:40"),
            (4_107_542_399, "2100-02-28T23:59:59"),
        ];
        let mut failures = Vec::new();
        for (secs, want) in cases {
            let mut out = Vec::new();
            line_start(&mut out, UNIX_EPOCH + Duration::new(secs, 1_500));
            let got = String::from_utf8(out).unwrap();
            let want = format!("{want}.000001Z  INFO access: ");
            if got != want {
                failures.push(format!("{secs}: {got:?}, want {want:?}"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn str_fields_are_quoted_as_tracing_quotes_them() {
        let mut out = Vec::new();
        put_str(&mut out, "route", "Ingress a/b#0");
        put_str(&mut out, "error", "");
        put_str(&mut out, "x", "a\"b\n");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "route=\"Ingress a/b#0\" error=\"\" x=\"a\\\"b\\n\" "
        );
    }
}
