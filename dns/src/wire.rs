//! The query parser and the per-query patching of pre-encoded answers: the only code that reads
//! client bytes.
//!
//! `parse_query` reads the header and the one question of a query without allocating, skips the
//! other sections record by record (so a truncated or overlong packet is caught here), and
//! extracts the EDNS OPT record. It never panics: every read is bounds-checked (the fuzz target
//! in `dns/fuzz` and `tests::garbage_never_panics` feed it arbitrary bytes).
//!
//! `finish` turns a response template (a full DNS message with ID 0, the question in lower
//! case and no OPT record) into the answer for one query: it copies the template, patches the
//! ID, the RD and CD bits and the question's case, appends an OPT record when the query had
//! one, and truncates (TC, question only) when the result does not fit the client's UDP size.

/// Fixed DNS header length.
pub const HEADER_LEN: usize = 12;
/// Largest UDP answer we send (the DNS flag day 2020 value), whatever the client offers.
pub const MAX_UDP_PAYLOAD: u16 = 1232;
/// Answer size without EDNS.
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;

pub const TYPE_OPT: u16 = 41;
pub const CLASS_IN: u16 = 1;

/// The EDNS OPT record of a query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Opt {
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
}

/// Why a packet is not answered normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Too short for a header, or a response: drop silently (answering responses invites
    /// reflection loops).
    Drop,
    /// Answer with this RCODE, echoing the ID and opcode (and the question when it parsed).
    Rcode(u8),
}

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;
pub const RCODE_NOTIMP: u8 = 4;
pub const RCODE_REFUSED: u8 = 5;

/// A parsed query. `qname` is the question name's wire form (as sent); `key` is the lower-case
/// wire name followed by the big-endian QTYPE, the key of pre-encoded answers.
#[derive(Clone, Debug)]
pub struct Query<'a> {
    pub id: u16,
    /// Header bytes 2 and 3 (flags) as received.
    pub flags: u16,
    pub qname: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    pub opt: Option<Opt>,
    /// End of the question section.
    pub question_end: usize,
}

impl Query<'_> {
    pub fn recursion_desired(&self) -> bool {
        self.flags & 0x0100 != 0
    }

    pub fn checking_disabled(&self) -> bool {
        self.flags & 0x0010 != 0
    }

    /// The largest UDP answer this client accepts (512 without EDNS, at most 1232).
    pub fn udp_limit(&self) -> usize {
        match self.opt {
            Some(o) => o.payload.clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD) as usize,
            None => CLASSIC_UDP_PAYLOAD as usize,
        }
    }

    /// The question name in presentation form, lower case, without the trailing dot (`""` for
    /// the root). Labels with dots or non-printable bytes are escaped as `\DDD`, so they never
    /// match a table name.
    pub fn name_lower(&self) -> String {
        let mut s = String::with_capacity(self.qname.len());
        let mut i = 0;
        while i < self.qname.len() {
            let len = self.qname[i] as usize;
            if len == 0 {
                break;
            }
            if !s.is_empty() {
                s.push('.');
            }
            for &b in &self.qname[i + 1..i + 1 + len] {
                let b = b.to_ascii_lowercase();
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'*' {
                    s.push(b as char);
                } else {
                    s.push_str(&format!("\\{b:03}"));
                }
            }
            i += 1 + len;
        }
        s
    }

    /// Writes the lookup key (lower-case wire name + QTYPE) into `buf`, returning its length.
    pub fn key_into(&self, buf: &mut [u8; 258]) -> usize {
        let n = self.qname.len();
        for (d, s) in buf.iter_mut().zip(self.qname) {
            *d = s.to_ascii_lowercase();
        }
        buf[n..n + 2].copy_from_slice(&self.qtype.to_be_bytes());
        n + 2
    }
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// The ID and opcode of anything at least a header long that is not a response.
pub fn header_of(packet: &[u8]) -> Option<(u16, u16)> {
    if packet.len() < HEADER_LEN {
        return None;
    }
    let flags = u16_at(packet, 2)?;
    if flags & 0x8000 != 0 {
        return None;
    }
    Some((u16_at(packet, 0)?, flags))
}

/// Skips a name that may use compression pointers (answer/authority/additional sections).
fn skip_name(b: &[u8], mut i: usize) -> Option<usize> {
    let mut total = 0usize;
    loop {
        let len = *b.get(i)? as usize;
        match len {
            0 => return Some(i + 1),
            l if l & 0xC0 == 0xC0 => {
                b.get(i + 1)?;
                return Some(i + 2);
            }
            l if l & 0xC0 != 0 => return None,
            l => {
                total += l + 1;
                if total > 255 {
                    return None;
                }
                i += 1 + l;
                if i > b.len() {
                    return None;
                }
            }
        }
    }
}

/// Parses a query. Errors say whether to drop the packet or answer with an RCODE.
pub fn parse_query(b: &[u8]) -> Result<Query<'_>, Reject> {
    let (id, flags) = header_of(b).ok_or(Reject::Drop)?;
    let opcode = (flags >> 11) & 0xF;
    if opcode != 0 {
        return Err(Reject::Rcode(RCODE_NOTIMP));
    }
    let qd = u16_at(b, 4).unwrap_or(0);
    let an = u16_at(b, 6).unwrap_or(0) as usize;
    let ns = u16_at(b, 8).unwrap_or(0) as usize;
    let ar = u16_at(b, 10).unwrap_or(0) as usize;
    if qd != 1 {
        return Err(Reject::Rcode(RCODE_FORMERR));
    }
    // The question name: plain labels only (nothing precedes it to point to).
    let start = HEADER_LEN;
    let mut i = start;
    loop {
        let len = *b.get(i).ok_or(Reject::Rcode(RCODE_FORMERR))? as usize;
        if len == 0 {
            i += 1;
            break;
        }
        if len > 63 {
            return Err(Reject::Rcode(RCODE_FORMERR));
        }
        i += 1 + len;
        if i - start > 255 - 1 {
            return Err(Reject::Rcode(RCODE_FORMERR));
        }
    }
    if i > b.len() {
        return Err(Reject::Rcode(RCODE_FORMERR));
    }
    let qname = &b[start..i];
    let qtype = u16_at(b, i).ok_or(Reject::Rcode(RCODE_FORMERR))?;
    let qclass = u16_at(b, i + 2).ok_or(Reject::Rcode(RCODE_FORMERR))?;
    let question_end = i + 4;
    let mut at = question_end;
    let mut opt = None;
    for n in 0..an + ns + ar {
        let name_start = at;
        at = skip_name(b, at).ok_or(Reject::Rcode(RCODE_FORMERR))?;
        let rtype = u16_at(b, at).ok_or(Reject::Rcode(RCODE_FORMERR))?;
        let rclass = u16_at(b, at + 2).ok_or(Reject::Rcode(RCODE_FORMERR))?;
        let ttl_hi = u16_at(b, at + 4).ok_or(Reject::Rcode(RCODE_FORMERR))?;
        let ttl_lo = u16_at(b, at + 6).ok_or(Reject::Rcode(RCODE_FORMERR))?;
        let rdlen = u16_at(b, at + 8).ok_or(Reject::Rcode(RCODE_FORMERR))? as usize;
        at += 10 + rdlen;
        if at > b.len() {
            return Err(Reject::Rcode(RCODE_FORMERR));
        }
        if rtype == TYPE_OPT {
            // RFC 6891: one OPT, in the additional section, owned by the root.
            if n < an + ns || opt.is_some() || b[name_start] != 0 {
                return Err(Reject::Rcode(RCODE_FORMERR));
            }
            opt = Some(Opt {
                payload: rclass,
                version: (ttl_hi & 0xFF) as u8,
                dnssec_ok: ttl_lo & 0x8000 != 0,
            });
        }
    }
    Ok(Query {
        id,
        flags,
        qname,
        qtype,
        qclass,
        opt,
        question_end,
    })
}

/// The 11-byte OPT record we send: our payload size, version 0, no flags, no options.
pub fn push_opt(out: &mut Vec<u8>, ext_rcode: u8) {
    out.push(0);
    out.extend_from_slice(&TYPE_OPT.to_be_bytes());
    out.extend_from_slice(&MAX_UDP_PAYLOAD.to_be_bytes());
    out.extend_from_slice(&[ext_rcode, 0, 0, 0]);
    out.extend_from_slice(&0u16.to_be_bytes());
}

fn set_u16(out: &mut [u8], i: usize, v: u16) {
    out[i..i + 2].copy_from_slice(&v.to_be_bytes());
}

/// A header + question only response with `rcode` (low 4 bits in the header, the rest in OPT).
/// Used for errors and for truncated answers (`tc`). Without a parsed question, the question
/// section is empty.
pub fn short_response(
    out: &mut Vec<u8>,
    id: u16,
    query_flags: u16,
    question: Option<(&Query<'_>, &[u8])>,
    rcode: u16,
    tc: bool,
) {
    out.clear();
    out.extend_from_slice(&id.to_be_bytes());
    // QR, opcode echoed, RD and CD echoed, RA set.
    let mut flags = 0x8000 | (query_flags & 0x7800) | (query_flags & 0x0110) | 0x0080;
    if tc {
        flags |= 0x0200;
    }
    flags |= rcode & 0xF;
    out.extend_from_slice(&flags.to_be_bytes());
    let with_opt = question.is_some_and(|(q, _)| q.opt.is_some()) || rcode > 0xF;
    out.extend_from_slice(&[
        0,
        u8::from(question.is_some()),
        0,
        0,
        0,
        0,
        0,
        u8::from(with_opt),
    ]);
    if let Some((q, raw)) = question {
        out.extend_from_slice(&raw[HEADER_LEN..q.question_end]);
    }
    if with_opt {
        push_opt(out, (rcode >> 4) as u8);
    }
}

/// Writes the answer to `q` (raw query bytes `raw`) from `template` into `out`, truncating to
/// `limit` bytes (the client's UDP size, or 65535 over TCP).
pub fn finish(out: &mut Vec<u8>, template: &[u8], q: &Query<'_>, raw: &[u8], limit: usize) {
    let opt_len = if q.opt.is_some() { 11 } else { 0 };
    if template.len() + opt_len > limit {
        let rcode = u16::from(template[3] & 0xF);
        short_response(out, q.id, q.flags, Some((q, raw)), rcode, true);
        // Keep AA from the template.
        out[2] |= template[2] & 0x04;
        return;
    }
    out.clear();
    out.extend_from_slice(template);
    set_u16(out, 0, q.id);
    // RD (byte 2 bit 0) and CD (byte 3 bit 4) from the query.
    out[2] = (out[2] & !0x01) | u8::from(q.recursion_desired());
    out[3] = (out[3] & !0x10) | if q.checking_disabled() { 0x10 } else { 0 };
    out[HEADER_LEN..HEADER_LEN + q.qname.len()].copy_from_slice(q.qname);
    if q.opt.is_some() {
        push_opt(out, 0);
        let ar = u16::from_be_bytes([out[10], out[11]]) + 1;
        set_u16(out, 10, ar);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16, opt: bool) -> Vec<u8> {
        let mut b = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(opt)];
        for l in name.split('.').filter(|l| !l.is_empty()) {
            b.push(l.len() as u8);
            b.extend_from_slice(l.as_bytes());
        }
        b.push(0);
        b.extend_from_slice(&qtype.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        if opt {
            b.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0]);
        }
        b
    }

    #[test]
    fn parses_a_query_with_edns() {
        let raw = query("Web.Default.svc.cluster.local", 1, true);
        let q = parse_query(&raw).unwrap();
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.qtype, 1);
        assert_eq!(q.name_lower(), "web.default.svc.cluster.local");
        assert_eq!(
            q.opt,
            Some(Opt {
                payload: 4096,
                version: 0,
                dnssec_ok: true
            })
        );
        assert_eq!(q.udp_limit(), 1232);
        let mut key = [0u8; 258];
        let n = q.key_into(&mut key);
        assert_eq!(&key[..4], b"\x03web");
        assert_eq!(&key[n - 2..n], &[0, 1]);
    }

    #[test]
    fn rejects() {
        assert_eq!(parse_query(&[0; 5]).unwrap_err(), Reject::Drop);
        let mut r = query("a", 1, false);
        r[2] |= 0x80; // a response
        assert_eq!(parse_query(&r).unwrap_err(), Reject::Drop);
        let mut r = query("a", 1, false);
        r[5] = 2; // two questions
        assert_eq!(parse_query(&r).unwrap_err(), Reject::Rcode(RCODE_FORMERR));
        let r = query("a", 1, false);
        assert_eq!(
            parse_query(&r[..r.len() - 1]).unwrap_err(),
            Reject::Rcode(RCODE_FORMERR)
        );
        let mut r = query("a", 1, false);
        r[2] = 0x28; // opcode UPDATE
        assert_eq!(parse_query(&r).unwrap_err(), Reject::Rcode(RCODE_NOTIMP));
        let mut r = query("a", 1, true);
        r[11] = 2; // two OPT records claimed, one present
        assert_eq!(parse_query(&r).unwrap_err(), Reject::Rcode(RCODE_FORMERR));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        let base = query("web.default.svc.cluster.local", 33, true);
        for _ in 0..200_000 {
            let mut b = if rng.bool() {
                base.clone()
            } else {
                (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect()
            };
            for _ in 0..rng.usize(0..4) {
                if !b.is_empty() {
                    let i = rng.usize(..b.len());
                    b[i] = rng.u8(..);
                }
            }
            b.truncate(rng.usize(0..=b.len()));
            if let Ok(q) = parse_query(&b) {
                let _ = q.name_lower();
                let mut key = [0u8; 258];
                q.key_into(&mut key);
            }
        }
    }
}
