//! The text of an access-log line, written field by field into a byte buffer without
//! `core::fmt` where the value is plain: the fast path's lines (`fast/respond.rs`), and the
//! value rules both paths share (`LogSafe`, `Millis`).
//!
//! Why: formatted with `write!`, the fast path's line took ~9,600 user-space instructions per
//! request (callgrind, second HTTP setup, issue 17.5), a third of all the proxy did for the
//! request: `fmt::write`'s per-piece calls through `io::Write`, `Ipv4Addr`'s and
//! `SocketAddr`'s padding-aware `Display`, `f64`'s shortest-representation search, and the
//! calendar arithmetic of every timestamp. Here plain values (the common case) are copied as
//! bytes; anything that needs quoting or escaping still goes through `fmt`, so the text is the
//! same as `tracing_subscriber::fmt` would write for the pingora path's event.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A value the client chose (host, path, method, request id), as an access log field: as is
/// when it is printable ASCII without quotes, backslashes or `=`, else quoted with Rust string
/// escapes, so it can neither end the line nor pass for another field (`host="a status=200"`).
pub struct LogSafe<'a>(pub &'a str);

/// The bytes a [`LogSafe`] value may hold and still be written as is: printable ASCII but `"`,
/// `\\` and `=`. A table, one load per byte: the comparisons took ~8 instructions a byte, and
/// a request's values (method, host, path, a 32-digit request id) are some 50 bytes.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_graphic() && c != b'"' && c != b'\\' && c != b'=';
        b += 1;
    }
    t
};

impl LogSafe<'_> {
    /// Written as is.
    fn plain(&self) -> bool {
        !self.0.is_empty() && self.0.bytes().all(|b| PLAIN[usize::from(b)])
    }
}

impl std::fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.plain() {
            f.write_str(self.0)
        } else {
            write!(f, "{:?}", self.0)
        }
    }
}

/// A duration in milliseconds, to the nanosecond, as a decimal with at least one fraction
/// digit and no trailing zeros (`0.35`, `12.0`, `1.000001`): the `duration_ms` field. It is how
/// `f64`'s `Debug` shows such a number, without the float: `as_secs_f64() * 1000.0` showed
/// rounding noise (`0.35287099999999996`) and took the shortest-representation search.
pub struct Millis(pub Duration);

impl Millis {
    /// The text, in a stack buffer: (buffer, length).
    fn text(&self) -> ([u8; 32], usize) {
        let nanos = self.0.as_nanos();
        let (whole, mut frac) = ((nanos / 1_000_000) as u64, (nanos % 1_000_000) as u32);
        let mut out = [0u8; 32];
        let mut n = put_u64_at(&mut out, whole);
        out[n] = b'.';
        n += 1;
        let mut digits = 6;
        while digits > 1 && frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        for i in (0..digits).rev() {
            out[n + i] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        (out, n + digits)
    }
}

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (b, n) = self.text();
        f.write_str(std::str::from_utf8(&b[..n]).expect("ASCII digits"))
    }
}

/// Writes `v` in decimal at the start of `out` (room for its digits: 20 for any `u64`); returns
/// its length.
fn put_u64_at(out: &mut [u8], mut v: u64) -> usize {
    let n = digits(v);
    for i in (0..n).rev() {
        out[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    n
}

/// How many decimal digits `v` has.
fn digits(v: u64) -> usize {
    let mut n = 1;
    let mut t = v;
    while t >= 10 {
        t /= 10;
        n += 1;
    }
    n
}

/// `v` in decimal. Numbers below 1,000 (status codes, retries, address octets) take a few
/// stores, with no loop and no copy of a variable length.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    let d = |v: u64| b'0' + (v % 10) as u8;
    if v < 10 {
        out.push(d(v));
    } else if v < 100 {
        out.extend_from_slice(&[d(v / 10), d(v)]);
    } else if v < 1000 {
        out.extend_from_slice(&[d(v / 100), d(v / 10), d(v)]);
    } else {
        let mut b = [0u8; 20];
        let n = put_u64_at(&mut b, v);
        out.extend_from_slice(&b[..n]);
    }
}

/// An address as `Display` shows it.
pub fn put_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            for (i, o) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                put_u64(out, u64::from(o));
            }
        }
        IpAddr::V6(ip) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// A socket address as `Display` shows it (`1.2.3.4:80`, `[::1]:80`).
pub fn put_socket_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(a) => {
            // In a stack buffer, copied once: a push or a short copy per piece took ~350
            // instructions for the line's `upstream=` (callgrind, issue 17.5).
            let mut b = [0u8; 21];
            let mut n = 0;
            for (i, o) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    b[n] = b'.';
                    n += 1;
                }
                n += put_u64_at(&mut b[n..], u64::from(o));
            }
            b[n] = b':';
            n += 1;
            n += put_u64_at(&mut b[n..], u64::from(a.port()));
            out.extend_from_slice(&b[..n]);
        }
        SocketAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// A client-chosen value as [`LogSafe`] shows it.
pub fn put_safe(out: &mut Vec<u8>, v: &str) {
    let v = LogSafe(v);
    if v.plain() {
        out.extend_from_slice(v.0.as_bytes());
    } else {
        let _ = write!(out, "{v}");
    }
}

/// A `&str` as `tracing` writes a `&str` field (its `Debug`: quoted, escaped).
pub fn put_quoted(out: &mut Vec<u8>, v: &str) {
    // Printable ASCII other than `"` and `\` is what `str`'s Debug leaves as it is.
    if v.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(v.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{v:?}");
    }
}

/// `name="value" `, a `&str` field as `tracing` writes it.
pub fn put_str(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.push(b'=');
    put_quoted(out, value);
    out.push(b' ');
}

/// A duration as [`Millis`] shows it.
pub fn put_millis(out: &mut Vec<u8>, d: Duration) {
    let (b, n) = Millis(d).text();
    out.extend_from_slice(&b[..n]);
}

thread_local! {
    /// A reading of both clocks, at most a second old: `wall_time`'s base.
    static WALL: std::cell::Cell<Option<(Instant, SystemTime)>> = const { std::cell::Cell::new(None) };
    /// The second `line_start` last wrote, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// The wall-clock time at `at`, an `Instant` of about now (the end of a request, read anyway
/// for its duration): the monotonic time since a reading of both clocks at most a second old,
/// added to that reading's wall time, so a line costs no reading of its own (each ~50 ns on a
/// virtual machine). A step of the wall clock shows within a second; between two readings the
/// clocks drift apart by well under a millisecond.
pub fn wall_time(at: Instant) -> SystemTime {
    // One subtraction (each is ~50 instructions: `Timespec::sub_timespec`).
    let since =
        |(base, wall): (Instant, SystemTime)| Some((at.checked_duration_since(base)?, wall));
    match WALL.with(|w| w.get()).and_then(since) {
        Some((d, wall)) if d < Duration::from_secs(1) => wall + d,
        _ => {
            let wall = SystemTime::now();
            WALL.with(|w| w.set(Some((at, wall))));
            wall
        }
    }
}

/// The start of a line as `tracing_subscriber::fmt` writes it without colour:
/// `2026-12-06T03:04:26.331893Z  INFO access: `. The date and time of day are worked out once
/// per second on each thread.
pub fn line_start(out: &mut Vec<u8>, now: SystemTime) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (at, text) = SECOND.with(|s| s.get());
    if at == secs {
        out.extend_from_slice(&text);
    } else {
        let (y, mo, day) = civil_from_days((secs / 86_400) as i64);
        let s = secs % 86_400;
        let start = out.len();
        let _ = write!(
            out,
            "{y:04}-{mo:02}-{day:02}T{:02}:{:02}:{:02}",
            s / 3600,
            s / 60 % 60,
            s % 60
        );
        // Kept unless the year takes more than four digits.
        if let Ok(text) = <[u8; 19]>::try_from(&out[start..]) {
            SECOND.with(|s| s.set((secs, text)));
        }
    }
    micros_and_level(out, d.subsec_micros())
}

fn micros_and_level(out: &mut Vec<u8>, mut micros: u32) {
    let mut b = *b".000000Z  INFO access: ";
    for i in (1..=6).rev() {
        b[i] = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.extend_from_slice(&b);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_the_calendar() {
        // (seconds since the epoch, its RFC 3339 form); each twice: worked out, then kept.
        let cases = [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_798_600_000, "2026-12-30T03:06:40"),
            (1_798_600_000, "2026-12-30T03:06:40"),
            (1_798_600_001, "2026-12-30T03:06:41"),
            (4_107_542_399, "2100-02-28T23:59:59"),
        ];
        let mut failures = Vec::new();
        for (secs, want) in cases {
            for _ in 0..2 {
                let mut out = Vec::new();
                line_start(&mut out, UNIX_EPOCH + Duration::new(secs, 1_500));
                let got = String::from_utf8(out).unwrap();
                let want = format!("{want}.000001Z  INFO access: ");
                if got != want {
                    failures.push(format!("{secs}: {got:?}, want {want:?}"));
                }
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn str_fields_are_quoted_as_tracing_quotes_them() {
        let mut out = Vec::new();
        for (name, value) in [
            ("route", "Ingress a/b#0"),
            ("error", ""),
            ("x", "a\"b\n"),
            ("y", "it's é\\"),
        ] {
            put_str(&mut out, name, value);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "route=\"Ingress a/b#0\" error=\"\" x=\"a\\\"b\\n\" y=\"it's é\\\\\" "
        );
    }

    #[test]
    fn values_are_written_as_display_writes_them() {
        let addrs: [SocketAddr; 4] = [
            "10.0.0.1:80".parse().unwrap(),
            "255.255.255.255:65535".parse().unwrap(),
            "0.0.0.0:0".parse().unwrap(),
            "[2001:db8::1]:8080".parse().unwrap(),
        ];
        for a in addrs {
            let (mut sa, mut ip) = (Vec::new(), Vec::new());
            put_socket_addr(&mut sa, a);
            put_ip(&mut ip, a.ip());
            assert_eq!(String::from_utf8(sa).unwrap(), a.to_string());
            assert_eq!(String::from_utf8(ip).unwrap(), a.ip().to_string());
        }
        for v in [0, 7, 10, 404, 65_535, u64::MAX] {
            let mut out = Vec::new();
            put_u64(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
        for v in ["GET", "a.test", "/p?q", "", "a b", "a=b", "é"] {
            let mut out = Vec::new();
            put_safe(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), LogSafe(v).to_string());
        }
    }

    #[test]
    fn log_fields_cannot_forge_fields_or_lines() {
        let show = |s: &str| LogSafe(s).to_string();
        assert_eq!(show("a.test"), "a.test");
        assert_eq!(show("/p/a-b_c.~%20"), "/p/a-b_c.~%20");
        assert_eq!(show("a status=200"), "\"a status=200\"");
        assert_eq!(show("a\nb"), "\"a\\nb\"");
        assert_eq!(show("a\"b"), "\"a\\\"b\"");
        assert_eq!(show("é"), "\"é\"");
        assert_eq!(show(""), "\"\"");
    }

    #[test]
    fn milliseconds_read_as_the_float_would() {
        // (duration, text): what `f64`'s Debug shows for the exact number of milliseconds.
        let cases = [
            (Duration::ZERO, "0.0"),
            (Duration::from_nanos(352_871), "0.352871"),
            (Duration::from_nanos(350_000), "0.35"),
            (Duration::from_millis(12), "12.0"),
            (Duration::from_nanos(1_000_001), "1.000001"),
            (Duration::from_secs(90), "90000.0"),
            (Duration::new(3, 5), "3000.000005"),
        ];
        for (d, want) in cases {
            let mut out = Vec::new();
            put_millis(&mut out, d);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{d:?}");
            assert_eq!(Millis(d).to_string(), want, "{d:?}");
            let float = format!("{:?}", d.as_nanos() as f64 / 1e6);
            assert_eq!(float, want, "{d:?}: the float's text");
        }
    }
}
