//! Protobuf lists of Services and EndpointSlices, read as they arrive: the kube-apiserver wire
//! envelope, the list's resource version, and each item's bytes as soon as they are in, for
//! `kubernetes_pb_items.rs` to read straight into the fields the conversion takes.
//!
//! kube-apiserver answers a request with `Accept: application/vnd.kubernetes.protobuf` with the
//! 4 bytes `k8s\0` followed by a `runtime.Unknown` message whose `raw` field holds the object
//! (here the `ServiceList` / `EndpointSliceList`), and `Content-Type:
//! application/vnd.kubernetes.protobuf`; errors are a `metav1.Status` in the same envelope. At
//! 10k Services / 100k endpoints the two lists are 6.3 MB and 14 MB instead of 10 MB and 29 MB
//! of JSON, and cheaper for the API server to encode (docs/sources.md).
//!
//! [`ListReader`] takes the body in the chunks the connection delivers and hands out each list
//! item once it is complete, borrowed from its buffer: nothing is decoded into intermediate
//! objects, the envelope's `raw` is never copied out, and only the item being received is held
//! (the buffer keeps the bytes not yet consumed). The protobuf wire format is read by
//! [`Fields`], a few lines over a byte slice; every length is checked against what encloses it,
//! so a broken body is an error, never a panic or a huge allocation.
//!
//! Why not prost's generated decoding (k8s-pb's messages, which the envelope still uses): it
//! builds every field of every item, `managedFields` included, which then had to be moved into
//! k8s-openapi objects and dropped. In the profile of a 10k-Service start against kube-apiserver
//! that was 31% of switchboard's CPU (prost 23%, the move 5.5%, the drop 2.5%; docs/sources.md,
//! "Start-up: where the time goes"); reading only the converted fields halved switchboard's CPU
//! to all names correct, 0.50 → 0.25 s, and took the start from 0.57 to 0.37 s
//! (`bench/run startup --runs 5 --baseline-bin`, 2026-12-06 18:55, docs/benchmarks.md).

use k8s_pb::apimachinery::pkg::apis::meta::v1 as pb_meta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;

/// The protobuf media type of kube-apiserver.
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";

/// The `Accept` header of the protobuf lists: protobuf first, JSON where the server has no
/// protobuf (as client-go's `ContentConfig{AcceptContentTypes: "application/vnd.kubernetes.protobuf,
/// application/json"}` and CoreDNS ask). A server that cannot encode the kind in protobuf (an
/// aggregated API, a proxy) answers JSON, which is read as such.
pub const ACCEPT: &str = "application/vnd.kubernetes.protobuf, application/json";

/// The first bytes of every protobuf body kube-apiserver writes.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// Why a protobuf body could not be read. The list is then read again as JSON.
#[derive(Debug, thiserror::Error)]
pub enum PbError {
    #[error("the body ({0} bytes) does not start with the protobuf magic k8s\\0")]
    BadMagic(usize),
    #[error("cannot decode the runtime.Unknown envelope: {0}")]
    Envelope(WireError),
    #[error("the envelope holds no object")]
    NoRaw,
    #[error("the envelope's content encoding {0:?} is not supported")]
    Encoding(String),
    #[error("the envelope holds a {found}, not a {expected}")]
    WrongKind {
        found: String,
        expected: &'static str,
    },
    #[error("cannot decode the {kind}: {error}")]
    Decode {
        kind: &'static str,
        error: WireError,
    },
}

/// What is wrong with protobuf bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("cut short")]
    Truncated,
    #[error("a varint longer than 10 bytes")]
    Varint,
    #[error("wire type {0} is not supported")]
    WireType(u8),
    #[error("field {0} has the wrong wire type")]
    Type(u32),
    #[error("field {0} is not UTF-8")]
    Utf8(u32),
}

/// One field's value, as the wire format carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Varint(u64),
    /// Length-delimited: a string, bytes, a message or a packed list.
    Bytes(&'a [u8]),
    /// A fixed64 or fixed32, little-endian (no field read here has one).
    Fixed(&'a [u8]),
}

/// A field of a message: its number and value.
#[derive(Clone, Copy, Debug)]
pub struct Field<'a> {
    pub number: u32,
    pub value: Value<'a>,
}

impl<'a> Field<'a> {
    /// A length-delimited value (a message or bytes).
    pub fn bytes(self) -> Result<&'a [u8], WireError> {
        match self.value {
            Value::Bytes(b) => Ok(b),
            _ => Err(WireError::Type(self.number)),
        }
    }

    pub fn str(self) -> Result<&'a str, WireError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| WireError::Utf8(self.number))
    }

    pub fn varint(self) -> Result<u64, WireError> {
        match self.value {
            Value::Varint(v) => Ok(v),
            _ => Err(WireError::Type(self.number)),
        }
    }

    /// An `int32` (negative values are sign-extended to 64 bits on the wire).
    pub fn int32(self) -> Result<i32, WireError> {
        Ok(self.varint()? as i32)
    }

    pub fn int64(self) -> Result<i64, WireError> {
        Ok(self.varint()? as i64)
    }

    pub fn bool(self) -> Result<bool, WireError> {
        Ok(self.varint()? != 0)
    }
}

/// The fields of one message, in wire order.
pub struct Fields<'a> {
    buf: &'a [u8],
}

/// The fields of the message in `buf`.
pub fn fields(buf: &[u8]) -> Fields<'_> {
    Fields { buf }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let r = field(self.buf);
        match r {
            Ok((f, len)) => {
                self.buf = &self.buf[len..];
                Some(Ok(f))
            }
            Err(e) => {
                self.buf = &[];
                Some(Err(e))
            }
        }
    }
}

/// The varint at the start of `buf` and its length.
fn varint(buf: &[u8]) -> Result<(u64, usize), WireError> {
    let mut v = 0u64;
    for (i, b) in buf.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    Err(if buf.len() < 10 {
        WireError::Truncated
    } else {
        WireError::Varint
    })
}

/// The field at the start of `buf` and its length on the wire; `Truncated` when `buf` ends
/// before it does.
fn field(buf: &[u8]) -> Result<(Field<'_>, usize), WireError> {
    let (tag, mut at) = varint(buf)?;
    let number = u32::try_from(tag >> 3).map_err(|_| WireError::Varint)?;
    let rest = &buf[at..];
    let value = match tag & 7 {
        0 => {
            let (v, n) = varint(rest)?;
            at += n;
            Value::Varint(v)
        }
        // fixed64, fixed32.
        w @ (1 | 5) => {
            let n = if w == 1 { 8 } else { 4 };
            let bytes = rest.get(..n).ok_or(WireError::Truncated)?;
            at += n;
            Value::Fixed(bytes)
        }
        2 => {
            let (len, n) = varint(rest)?;
            let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
            let end = n.checked_add(len).ok_or(WireError::Truncated)?;
            let bytes = rest.get(n..end).ok_or(WireError::Truncated)?;
            at += end;
            Value::Bytes(bytes)
        }
        t => return Err(WireError::WireType(t as u8)),
    };
    Ok((Field { number, value }, at))
}

/// The `metav1.Status` of an error answered in protobuf, if the body is one.
pub fn status(body: &[u8]) -> Option<kube::core::Status> {
    let rest = body.strip_prefix(MAGIC.as_slice())?;
    let unknown = Unknown::decode(rest).ok()?;
    let kind = unknown.type_meta.and_then(|t| t.kind).unwrap_or_default();
    if !kind.is_empty() && kind != "Status" {
        return None;
    }
    let s = pb_meta::Status::decode(unknown.raw?.as_slice()).ok()?;
    let code = s.code.and_then(|c| u16::try_from(c).ok()).unwrap_or(0);
    Some(
        kube::core::Status::failure(
            s.message.as_deref().unwrap_or_default(),
            s.reason.as_deref().unwrap_or_default(),
        )
        .with_code(code),
    )
}

/// Where a [`ListReader`] is in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Magic,
    /// In the envelope's fields before `raw`.
    Envelope,
    /// In `raw`, the list, with this many of its bytes not yet consumed.
    List {
        left: usize,
    },
    /// In the envelope's fields after `raw`.
    Trailer,
}

/// Reads a protobuf list body of `expected` (`ServiceList`) as it arrives (see the module
/// docs): [`push`](Self::push) each chunk, take the complete items with
/// [`next_item`](Self::next_item), and [`finish`](Self::finish) at the end of the body.
pub struct ListReader {
    expected: &'static str,
    /// Received bytes from `at` on are not consumed yet.
    buf: Vec<u8>,
    at: usize,
    stage: Stage,
    received: usize,
    resource_version: Option<String>,
    encoding: Option<String>,
}

impl ListReader {
    pub fn new(expected: &'static str) -> Self {
        ListReader {
            expected,
            buf: Vec::new(),
            at: 0,
            stage: Stage::Magic,
            received: 0,
            resource_version: None,
            encoding: None,
        }
    }

    /// Adds the next bytes of the body. Bytes already consumed are dropped first, so the
    /// buffer holds at most one item beyond the chunk.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.at > 0 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(chunk);
        self.received += chunk.len();
    }

    /// The bytes of the next complete list item, or `None` until more of the body is pushed
    /// (or at its end).
    pub fn next_item(&mut self) -> Result<Option<&[u8]>, PbError> {
        loop {
            let rest = &self.buf[self.at..];
            match self.stage {
                Stage::Magic => {
                    if rest.len() < MAGIC.len() {
                        if !MAGIC.starts_with(rest) {
                            return Err(PbError::BadMagic(self.received));
                        }
                        return Ok(None);
                    }
                    if &rest[..MAGIC.len()] != MAGIC {
                        return Err(PbError::BadMagic(self.received));
                    }
                    self.at += MAGIC.len();
                    self.stage = Stage::Envelope;
                }
                Stage::Envelope => {
                    // `raw` is taken by its header alone: its items are read as they come.
                    match raw_header(rest) {
                        Ok(Some((len, header))) => {
                            self.at += header;
                            self.stage = Stage::List { left: len };
                            continue;
                        }
                        Ok(None) => {}
                        Err(WireError::Truncated) => return Ok(None),
                        Err(e) => return Err(PbError::Envelope(e)),
                    }
                    let Some((f, len)) = complete(field(rest), PbError::Envelope)? else {
                        return Ok(None);
                    };
                    if let (1, Value::Bytes(b)) = (f.number, f.value) {
                        // typeMeta: the kind.
                        let kind = type_kind(b).map_err(PbError::Envelope)?;
                        if !kind.is_empty() && kind != self.expected {
                            return Err(PbError::WrongKind {
                                found: kind.to_string(),
                                expected: self.expected,
                            });
                        }
                    }
                    self.at += len;
                }
                Stage::Trailer => {
                    let Some((f, len)) = complete(field(rest), PbError::Envelope)? else {
                        return Ok(None);
                    };
                    if let (3, Value::Bytes(_)) = (f.number, f.value) {
                        let e = f.str().map_err(PbError::Envelope)?;
                        self.encoding = Some(e.to_string());
                    }
                    self.at += len;
                }
                Stage::List { left: 0 } => self.stage = Stage::Trailer,
                Stage::List { left } => {
                    let decode = |error| PbError::Decode {
                        kind: self.expected,
                        error,
                    };
                    // Nothing of an item reaches past the list's end.
                    let within = &rest[..rest.len().min(left)];
                    let Some((f, len)) = complete(field(within), decode)? else {
                        if within.len() == left {
                            return Err(decode(WireError::Truncated));
                        }
                        return Ok(None);
                    };
                    self.stage = Stage::List { left: left - len };
                    let start = self.at;
                    self.at += len;
                    match (f.number, f.value) {
                        // metadata: the resource version to watch from.
                        (1, Value::Bytes(b)) => {
                            self.resource_version = list_rv(b).map_err(decode)?;
                        }
                        (2, Value::Bytes(item)) => {
                            let item_start = start + len - item.len();
                            return Ok(Some(&self.buf[item_start..start + len]));
                        }
                        (1 | 2, _) => return Err(decode(WireError::Type(f.number))),
                        _ => {}
                    }
                }
            }
        }
    }

    /// At the end of the body (every item taken): the list's resource version, or why the
    /// body was not a whole list.
    pub fn finish(mut self) -> Result<String, PbError> {
        let more = self.next_item()?.is_some();
        if self.stage == Stage::Magic {
            return Err(PbError::BadMagic(self.received));
        }
        if more || self.at < self.buf.len() || matches!(self.stage, Stage::List { .. }) {
            return Err(PbError::Envelope(WireError::Truncated));
        }
        match self.stage {
            Stage::Magic => Err(PbError::BadMagic(self.received)),
            Stage::Envelope => Err(PbError::NoRaw),
            _ => match self.encoding.filter(|e| !e.is_empty()) {
                Some(e) => Err(PbError::Encoding(e)),
                None => Ok(self.resource_version.unwrap_or_default()),
            },
        }
    }
}

/// `Some((length, header length))` when `buf` starts with the envelope's `raw` field (2,
/// length-delimited): its header, without waiting for its bytes.
fn raw_header(buf: &[u8]) -> Result<Option<(usize, usize)>, WireError> {
    let (tag, n) = varint(buf)?;
    if tag != (2 << 3 | 2) {
        return Ok(None);
    }
    let (len, m) = varint(&buf[n..])?;
    let len = usize::try_from(len).map_err(|_| WireError::Varint)?;
    Ok(Some((len, n + m)))
}

/// A field read from bytes that may end early: `None` when more bytes are needed.
fn complete<'a>(
    r: Result<(Field<'a>, usize), WireError>,
    wrap: impl Fn(WireError) -> PbError,
) -> Result<Option<(Field<'a>, usize)>, PbError> {
    match r {
        Ok(f) => Ok(Some(f)),
        Err(WireError::Truncated) => Ok(None),
        Err(e) => Err(wrap(e)),
    }
}

/// Field `number` of the message in `buf`, each occurrence read by `read` (so every one is
/// checked), the last one kept: a singular field written twice, as protobuf reads it.
pub fn last<'a, T>(
    buf: &'a [u8],
    number: u32,
    read: impl Fn(Field<'a>) -> Result<T, WireError>,
) -> Result<Option<T>, WireError> {
    let mut value = None;
    for f in fields(buf) {
        let f = f?;
        if f.number == number {
            value = Some(read(f)?);
        }
    }
    Ok(value)
}

/// `TypeMeta.kind` (field 2).
fn type_kind(b: &[u8]) -> Result<&str, WireError> {
    Ok(last(b, 2, Field::str)?.unwrap_or(""))
}

/// `ListMeta.resourceVersion` (field 2).
fn list_rv(b: &[u8]) -> Result<Option<String>, WireError> {
    Ok(last(b, 2, Field::str)?.map(str::to_string))
}

#[cfg(test)]
#[path = "kubernetes_pb_tests.rs"]
mod tests;
