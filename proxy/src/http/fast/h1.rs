//! HTTP/1.1 framing on the fast path: header helpers, the upstream response head (what the
//! client gets, how the body is delimited) and the end of a chunked body.

use super::io::Failure;

/// Most headers a request or response may have on this path (more: pingora's path).
pub(super) const MAX_HEADERS: usize = 64;
/// Largest upstream response head accepted (larger: 502).
pub(super) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Hop-by-hop headers (RFC 9110 7.6.1), never forwarded.
pub(super) fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
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
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    keepalive = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    keepalive = true;
                } else {
                    conn_tokens.push(t);
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            te = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or(Failure::Invalid("InvalidHTTPHeader"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Failure::Invalid("InvalidHTTPHeader"));
            }
            length = Some(n);
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
    let mut out = Vec::with_capacity(len + 64);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(code.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if hop_by_hop(h.name)
            || h.name.eq_ignore_ascii_case("x-request-id")
            || (te.is_some() && h.name.eq_ignore_ascii_case("content-length"))
            || conn_tokens
                .iter()
                .any(|t| t.eq_ignore_ascii_case(h.name.as_bytes()))
        {
            continue;
        }
        put_header(&mut out, h.name, h.value);
    }
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
