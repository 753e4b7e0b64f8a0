//! HTTP/1.1 framing on the fast path: header helpers, the upstream response head (what the
//! client gets, how the body is delimited) and the end of a chunked body.

use super::bufs;
use super::io::Failure;

/// Most headers a request or response may have on this path (more: pingora's path).
pub(super) const MAX_HEADERS: usize = 64;
/// Largest upstream response head accepted (larger: 502).
pub(super) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// What a request header is to the fast path (`prepare.rs`), by name; compared by length
/// first, as [`response_role`].
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Role {
    Host,
    ContentLength,
    /// A header that makes the request pingora's: `Transfer-Encoding`, `Upgrade`, `Expect`,
    /// `HTTP2-Settings`.
    Refused,
    Connection,
    RequestId,
    ForwardedFor,
    Forwarded,
    /// `X-Forwarded-Proto` and `X-Forwarded-Host`, set by this proxy.
    SetHere,
    /// Another hop-by-hop header (RFC 9110 7.6.1): `Keep-Alive`, `Proxy-Connection`, `TE`,
    /// `Trailer`.
    HopByHop,
    Other,
}

impl Role {
    /// Passed on upstream as received (unless `Connection` names it).
    pub(super) fn forwarded(self) -> bool {
        matches!(self, Role::Host | Role::ContentLength | Role::Other)
    }
}

pub(super) fn request_role(name: &str) -> Role {
    let is = |s: &str| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if is("te") => Role::HopByHop,
        4 if is("host") => Role::Host,
        6 if is("expect") => Role::Refused,
        7 if is("upgrade") => Role::Refused,
        7 if is("trailer") => Role::HopByHop,
        9 if is("forwarded") => Role::Forwarded,
        10 if is("connection") => Role::Connection,
        10 if is("keep-alive") => Role::HopByHop,
        12 if is("x-request-id") => Role::RequestId,
        14 if is("content-length") => Role::ContentLength,
        14 if is("http2-settings") => Role::Refused,
        15 if is("x-forwarded-for") => Role::ForwardedFor,
        16 if is("x-forwarded-host") => Role::SetHere,
        16 if is("proxy-connection") => Role::HopByHop,
        17 if is("transfer-encoding") => Role::Refused,
        17 if is("x-forwarded-proto") => Role::SetHere,
        _ => Role::Other,
    }
}

pub(super) fn put_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The comma-separated tokens of a `Connection` header value, trimmed.
pub(super) fn tokens(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// How the response body is delimited (RFC 9112 6.3).
#[derive(Debug, PartialEq)]
pub(super) enum Framing {
    None,
    Length(u64),
    Chunked,
    Close,
}

/// A parsed upstream response head.
pub(super) struct Head {
    pub(super) len: usize,
    pub(super) code: u16,
    /// The head to send the client (hop-by-hop headers removed, x-request-id set; without the
    /// final CRLF, so `Connection: close` can still be added).
    pub(super) client_head: Vec<u8>,
    pub(super) framing: Framing,
    /// The endpoint keeps the connection open after this response.
    pub(super) upstream_keepalive: bool,
}

/// What a response header is to this path; names compared by length first (one or two
/// comparisons for a header instead of up to nine).
#[derive(Clone, Copy, PartialEq)]
enum RespRole {
    Connection,
    TransferEncoding,
    ContentLength,
    RequestId,
    /// Another hop-by-hop header: `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`.
    HopByHop,
    Other,
}

fn response_role(name: &str) -> RespRole {
    let is = |s: &str| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if is("te") => RespRole::HopByHop,
        7 if is("upgrade") || is("trailer") => RespRole::HopByHop,
        10 if is("connection") => RespRole::Connection,
        10 if is("keep-alive") => RespRole::HopByHop,
        12 if is("x-request-id") => RespRole::RequestId,
        14 if is("content-length") => RespRole::ContentLength,
        16 if is("proxy-connection") => RespRole::HopByHop,
        17 if is("transfer-encoding") => RespRole::TransferEncoding,
        _ => RespRole::Other,
    }
}

pub(super) fn parse_head(
    buf: &[u8],
    head_only: bool,
    request_id: &str,
) -> Result<Option<Head>, Failure> {
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut hs);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_RESPONSE_HEAD => return Ok(None),
        _ => return Err(Failure::Invalid("InvalidHTTPHeader")),
    };
    let code = resp.code.unwrap_or(0);
    let version = resp.version.unwrap_or(0);
    let mut keepalive = version == 1;
    let mut conn_tokens: Vec<&[u8]> = Vec::new();
    let mut te = None;
    let mut length: Option<u64> = None;
    // Headers not passed on, and the Content-Length ones (not passed on beside a
    // Transfer-Encoding), by index (`MAX_HEADERS` is 64).
    let (mut dropped, mut lengths) = (0u64, 0u64);
    for (i, h) in resp.headers.iter().enumerate() {
        match response_role(h.name) {
            RespRole::Connection => {
                dropped |= 1 << i;
                for t in tokens(h.value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        keepalive = false;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        keepalive = true;
                    } else {
                        conn_tokens.push(t);
                    }
                }
            }
            RespRole::TransferEncoding => te = Some(h.value),
            RespRole::ContentLength => {
                lengths |= 1 << i;
                let n = content_length(h.value).ok_or(Failure::Invalid("InvalidHTTPHeader"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Failure::Invalid("InvalidHTTPHeader"));
                }
                length = Some(n);
            }
            RespRole::HopByHop | RespRole::RequestId => dropped |= 1 << i,
            RespRole::Other => {}
        }
    }
    if te.is_some() {
        dropped |= lengths;
    }
    if !conn_tokens.is_empty() {
        for (i, h) in resp.headers.iter().enumerate() {
            if conn_tokens
                .iter()
                .any(|t| t.eq_ignore_ascii_case(h.name.as_bytes()))
            {
                dropped |= 1 << i;
            }
        }
    }
    let framing = if head_only || code < 200 || code == 204 || code == 304 {
        Framing::None
    } else if let Some(te) = te {
        let last = te.rsplit(|&b| b == b',').next().unwrap_or(b"").trim_ascii();
        if last.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    // Room for the head, the lines added to it and the body bytes read with it (`respond`
    // appends them), so that nothing is copied twice.
    let body_read = (buf.len() - len).min(64 * 1024);
    let mut out = bufs::take(len + 128 + request_id.len() + body_read);
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse takes exactly three digits.
    out.extend_from_slice(&[
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    copy_headers(&mut out, &buf[..len], resp.headers, dropped);
    if code >= 200 {
        put_header(&mut out, "x-request-id", request_id.as_bytes());
    }
    Ok(Some(Head {
        len,
        code,
        client_head: out,
        upstream_keepalive: keepalive && framing != Framing::Close,
        framing,
    }))
}

/// Appends the header lines of `head` (a whole head, as parsed into `headers`) but those whose
/// bit is set in `dropped`. Lines that end in CRLF are copied as they came, consecutive ones in
/// one copy; a line that ends in a bare LF is written anew (`put_header`), so what leaves
/// always ends its lines in CRLF.
fn copy_headers(out: &mut Vec<u8>, head: &[u8], headers: &[httparse::Header<'_>], dropped: u64) {
    // Where header `i`'s line starts in `head` (httparse's names are slices of it).
    let start = |i: usize| headers[i].name.as_ptr() as usize - head.as_ptr() as usize;
    // The last line ends before the empty line that ends the head.
    let end = head.len() - if head.ends_with(b"\r\n") { 2 } else { 1 };
    let mut run: Option<usize> = None;
    for (i, h) in headers.iter().enumerate() {
        let from = start(i);
        let to = if i + 1 < headers.len() {
            start(i + 1)
        } else {
            end
        };
        let as_is = dropped & (1 << i) == 0 && to >= from + 2 && head[to - 2] == b'\r';
        if as_is {
            run.get_or_insert(from);
            continue;
        }
        if let Some(r) = run.take() {
            out.extend_from_slice(&head[r..from]);
        }
        if dropped & (1 << i) == 0 {
            put_header(out, h.name, h.value);
        }
    }
    if let Some(r) = run {
        out.extend_from_slice(&head[r..end]);
    }
}

/// A `Content-Length` value (whitespace around it allowed).
fn content_length(v: &[u8]) -> Option<u64> {
    // The usual value, digits alone (19 cannot overflow), without `str::parse`'s ~280
    // instructions (callgrind, issue 17.5); anything else as before.
    if !v.is_empty() && v.len() <= 19 && v.iter().all(u8::is_ascii_digit) {
        return Some(v.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')));
    }
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// Finds the end of a chunked body in the bytes fed to it, across reads.
#[derive(Debug, Default)]
pub(super) struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u32,
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum ChunkState {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    EndLf,
}

impl Chunked {
    /// Feeds `data`; `Ok(Some(n))` when the body ends after `n` of its bytes.
    pub(super) fn feed(&mut self, data: &[u8]) -> Result<Option<usize>, Failure> {
        let bad = || Failure::Invalid("InvalidChunk");
        let mut i = 0;
        while i < data.len() {
            let b = data[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).expect("hex digit") as u64;
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(bad());
                        }
                        self.size = self.size * 16 + d;
                    }
                    b';' | b' ' | b'\t' => self.state = ChunkState::Ext,
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.size_line_done().map_err(|_| bad())?,
                    _ => return Err(bad()),
                },
                ChunkState::Ext => match b {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' => self.size_line_done().map_err(|_| bad())?,
                    _ => {}
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(bad());
                    }
                    self.size_line_done().map_err(|_| bad())?;
                }
                ChunkState::Data => {
                    let take = (self.size).min((data.len() - i) as u64) as usize;
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => match b {
                    b'\r' => self.state = ChunkState::DataLf,
                    b'\n' => self.state = ChunkState::Size,
                    _ => return Err(bad()),
                },
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(bad());
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => match b {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' => return Ok(Some(i + 1)),
                    _ => self.state = ChunkState::TrailerLine,
                },
                ChunkState::TrailerLine => {
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(bad());
                    }
                    return Ok(Some(i + 1));
                }
            }
            i += 1;
        }
        Ok(None)
    }

    fn size_line_done(&mut self) -> Result<(), ()> {
        if self.digits == 0 {
            return Err(());
        }
        self.digits = 0;
        self.state = if self.size == 0 {
            ChunkState::TrailerStart
        } else {
            ChunkState::Data
        };
        Ok(())
    }
}
