//! nf_tables transactions over netlink: map and set elements added and deleted, regular chains
//! added, flushed and deleted, rules appended (rule.rs and exprs.rs write their expressions),
//! and for a whole table (netlink_full.rs) the table itself, sets and maps, base chains and a
//! named counter. What has no encoding here goes through `nft -f` (nft.rs).
//!
//! Why not `nft` for these too: at 10,000 services `nft -f` spends 10–25 ms per update
//! starting, then dumping the table's chains and sets into its cache before it sends a
//! handful of elements; this batch goes straight to the kernel (docs/benchmarks.md, "L4
//! programming"). Why hand-written: the Rust nf_tables crates are GPL-3.0 (rustables), bind
//! the C libnftnl and do not write map data (nftnl), or are young; the subset needed here —
//! elements with value or verdict data, regular chains, rules of a few expression kinds, inside
//! one batch — is a few hundred lines.
//!
//! Layout (linux/netfilter/nf_tables.h, nfnetlink.h): one datagram holding
//! `BATCH_BEGIN`, the element messages, `BATCH_END`; the kernel applies all or nothing and
//! answers every message that asked for an ACK.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::socket::{
    bind, recv, sendmsg, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr,
    SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWOBJ: u16 = 18;
const NFPROTO_INET: u8 = 1;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;
/// Elements per message: 256 of the longest (a verdict naming a chain of ~150 bytes) stay
/// well inside the 64 KiB an attribute can hold.
const ELEMENTS_PER_MESSAGE: usize = 256;
/// A batch's chunk size (`Batch::chunks`); no message is longer than `MESSAGE_MAX` (256
/// elements of the longest kind are under 48 KiB).
const CHUNK: usize = 1 << 20;
const MESSAGE_MAX: usize = 64 << 10;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;

/// What an element maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Data<'a> {
    /// A value map's data, as the kernel's registers hold it.
    Value(Reg),
    Jump(&'a str),
    Goto(&'a str),
}

/// One element: its key as the kernel's registers hold it, and its data in a map. Inline (no
/// allocation): a whole table writes a few hundred thousand of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elem<'a> {
    pub key: Reg,
    pub data: Option<Data<'a>>,
}

/// Register contents of up to 32 bytes (the longest key: an IPv6 hairpin pair), inline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reg {
    len: u8,
    bytes: [u8; 32],
}

impl Reg {
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Where `layout` writes: a message being built, or an element's inline key or data.
pub trait Put {
    fn put(&mut self, bytes: &[u8]);
}

impl Put for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Put for Reg {
    /// Panics past 32 bytes: no key or data of switchboard's maps is longer.
    fn put(&mut self, bytes: &[u8]) {
        let at = self.len as usize;
        self.bytes[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len() as u8;
    }
}

/// A set or map as nft declares it: the kernel's type numbers and lengths, and nft's own
/// description of the set (`NFTA_SET_USERDATA`: byte orders, `typeof` expressions), which
/// `nft list` and later `nft -f` element commands read back.
#[derive(Clone, Copy, Debug)]
pub struct SetDecl<'a> {
    pub name: &'a str,
    /// `NFT_SET_*` flags: 4 interval, 8 map.
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    /// A map's data type and length.
    pub data: Option<(u32, u32)>,
    pub userdata: &'a [u8],
}

/// A base chain's hook.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    /// `filter`, `route` or `nat`.
    pub kind: &'static str,
    /// `NF_INET_*`: 0 prerouting, 3 output, 4 postrouting.
    pub number: u32,
    pub priority: i32,
}

/// A transaction being written.
pub struct Batch {
    /// Full chunks of messages, then the one being written (`buf`). A whole table is over
    /// 10 MiB: one growing vector would get there by doubling, copying, and holding up to
    /// twice that at once; chunks of about `CHUNK` bytes go out together in one `sendmsg`.
    /// A message never spans two chunks.
    chunks: Vec<Vec<u8>>,
    buf: Vec<u8>,
    /// Messages that asked for an ACK.
    acks: usize,
    /// Sets declared so far (their batch-local ids).
    set_ids: u32,
}

/// Message sequence numbers, unique in the process, so that a socket used for many batches
/// tells this batch's answers from a late one to an earlier batch.
static SEQ: AtomicU32 = AtomicU32::new(1);

/// A netlink socket for nf_tables batches, kept open across transactions: closing one waits
/// for the kernel's deferred release of the last transaction (`NETLINK_URELEASE` flushes it:
/// an RCU grace period, 8–14 ms here after any batch that deleted elements), which is why
/// `nft delete element` takes ~10 ms of wall time with ~1 ms of CPU. It belongs to the network
/// namespace it was opened in.
pub struct Socket {
    fd: OwnedFd,
    /// The send buffer forced so far.
    sndbuf: usize,
}

impl Socket {
    pub fn open() -> io::Result<Socket> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &TimeVal::from(libc_timeval(Duration::from_secs(5))),
        )?;
        Ok(Socket { fd, sndbuf: 0 })
    }

    /// The kernel takes a batch as one message, so the send buffer must hold all of it: forced
    /// past `wmem_max` as nft does (CAP_NET_ADMIN, which programming needs anyway).
    fn reserve(&mut self, len: usize) {
        let want = len + (64 << 10);
        if want <= self.sndbuf {
            return;
        }
        if setsockopt(&self.fd, sockopt::SndBufForce, &want).is_err() {
            let _ = setsockopt(&self.fd, sockopt::SndBuf, &want);
        }
        self.sndbuf = want;
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Self {
        let mut b = Batch {
            chunks: Vec::new(),
            buf: Vec::with_capacity(4096),
            acks: 0,
            set_ids: 0,
        };
        b.message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        b
    }

    /// Adds (`add`) or deletes `elems` in `set` of the `inet` table `table`, in messages of at
    /// most `ELEMENTS_PER_MESSAGE` (an attribute's length is 16 bits).
    pub fn elements<'a>(
        &mut self,
        add: bool,
        table: &str,
        set: &str,
        elems: impl IntoIterator<Item = Elem<'a>>,
    ) {
        let mut elems = elems.into_iter().peekable();
        while elems.peek().is_some() {
            self.element_message(add, table, set, elems.by_ref().take(ELEMENTS_PER_MESSAGE));
        }
    }

    fn element_message<'a>(
        &mut self,
        add: bool,
        table: &str,
        set: &str,
        elems: impl Iterator<Item = Elem<'a>>,
    ) {
        let (kind, flags) = if add {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK)
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        };
        self.acks += 1;
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        self.message(ty, flags, NFPROTO_INET, 0, |b| {
            attr_str(b, NFTA_SET_ELEM_LIST_TABLE, table);
            attr_str(b, NFTA_SET_ELEM_LIST_SET, set);
            nest(b, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                for e in elems {
                    nest(b, NFTA_LIST_ELEM, |b| {
                        nest(b, NFTA_SET_ELEM_KEY, |b| {
                            attr(b, NFTA_DATA_VALUE, e.key.as_slice())
                        });
                        match e.data {
                            None => {}
                            Some(Data::Value(v)) => nest(b, NFTA_SET_ELEM_DATA, |b| {
                                attr(b, NFTA_DATA_VALUE, v.as_slice())
                            }),
                            Some(Data::Jump(c)) => verdict(b, NFT_JUMP, c),
                            Some(Data::Goto(c)) => verdict(b, NFT_GOTO, c),
                        }
                    });
                }
            });
        });
    }

    /// `add chain` (a regular chain: no hook).
    pub fn add_chain(&mut self, table: &str, chain: &str) {
        self.chain_message(NFT_MSG_NEWCHAIN, NLM_F_CREATE, table, chain);
    }

    pub fn delete_chain(&mut self, table: &str, chain: &str) {
        self.chain_message(NFT_MSG_DELCHAIN, 0, table, chain);
    }

    /// `flush chain`: deletes every rule of the chain.
    pub fn flush_chain(&mut self, table: &str, chain: &str) {
        self.acks += 1;
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELRULE;
        self.message(ty, NLM_F_REQUEST | NLM_F_ACK, NFPROTO_INET, 0, |b| {
            attr_str(b, NFTA_RULE_TABLE, table);
            attr_str(b, NFTA_RULE_CHAIN, chain);
        });
    }

    /// `add rule` at the end of the chain, with the expressions `exprs` writes.
    pub fn add_rule(&mut self, table: &str, chain: &str, exprs: impl FnOnce(&mut Vec<u8>)) {
        self.acks += 1;
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE;
        let flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK;
        self.message(ty, flags, NFPROTO_INET, 0, |b| {
            attr_str(b, NFTA_RULE_TABLE, table);
            attr_str(b, NFTA_RULE_CHAIN, chain);
            nest(b, NFTA_RULE_EXPRESSIONS, exprs);
        });
    }

    fn chain_message(&mut self, kind: u16, extra: u16, table: &str, chain: &str) {
        self.acks += 1;
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        self.message(
            ty,
            NLM_F_REQUEST | NLM_F_ACK | extra,
            NFPROTO_INET,
            0,
            |b| {
                attr_str(b, NFTA_CHAIN_TABLE, table);
                attr_str(b, NFTA_CHAIN_NAME, chain);
            },
        );
    }

    /// `add table` (when `create`: if missing) or `delete table`.
    pub fn table(&mut self, add: bool, table: &str) {
        let (kind, flags) = if add {
            (NFT_MSG_NEWTABLE, NLM_F_CREATE)
        } else {
            (NFT_MSG_DELTABLE, 0)
        };
        self.request(kind, flags, |b| {
            attr_str(b, 1, table); // NFTA_TABLE_NAME
            if add {
                attr(b, 2, &0u32.to_be_bytes()); // NFTA_TABLE_FLAGS
            }
        });
    }

    /// `add set` / `add map`, as nft declares it (set.id numbers the sets of one batch).
    pub fn add_set(&mut self, table: &str, set: &SetDecl<'_>) {
        self.set_ids += 1;
        let id = self.set_ids;
        self.request(NFT_MSG_NEWSET, NLM_F_CREATE, |b| {
            attr_str(b, 1, table); // NFTA_SET_TABLE
            attr_str(b, 2, set.name); // NAME
            attr(b, 3, &set.flags.to_be_bytes()); // FLAGS
            attr(b, 4, &set.key_type.to_be_bytes()); // KEY_TYPE
            attr(b, 5, &set.key_len.to_be_bytes()); // KEY_LEN
            if let Some((ty, len)) = set.data {
                attr(b, 6, &ty.to_be_bytes()); // DATA_TYPE
                attr(b, 7, &len.to_be_bytes()); // DATA_LEN
            }
            attr(b, 10, &id.to_be_bytes()); // ID
            attr(b, 13, set.userdata); // USERDATA
        });
    }

    /// `add counter` named `name`, at zero.
    pub fn add_counter(&mut self, table: &str, name: &str) {
        self.request(NFT_MSG_NEWOBJ, NLM_F_CREATE, |b| {
            attr_str(b, 1, table); // NFTA_OBJ_TABLE
            attr_str(b, 2, name); // NAME
            attr(b, 3, &1u32.to_be_bytes()); // TYPE: NFT_OBJECT_COUNTER
            nest(b, 4, |b| {
                attr(b, 1, &0u64.to_be_bytes()); // NFTA_COUNTER_BYTES
                attr(b, 2, &0u64.to_be_bytes()); // PACKETS
            });
        });
    }

    /// `add chain` with a hook: `type KIND hook HOOK priority PRIO; policy accept;`.
    pub fn add_base_chain(&mut self, table: &str, chain: &str, hook: &Hook) {
        self.request(NFT_MSG_NEWCHAIN, NLM_F_CREATE, |b| {
            attr_str(b, NFTA_CHAIN_TABLE, table);
            attr_str(b, NFTA_CHAIN_NAME, chain);
            attr_str(b, 7, hook.kind); // NFTA_CHAIN_TYPE
            attr(b, 5, &1u32.to_be_bytes()); // POLICY: NF_ACCEPT
            nest(b, 4, |b| {
                attr(b, 1, &hook.number.to_be_bytes()); // NFTA_HOOK_HOOKNUM
                attr(b, 2, &hook.priority.to_be_bytes()); // PRIORITY
            });
        });
    }

    /// Adds the prefixes `nets` (one family) to the interval set `set` as nft does: each range
    /// as a start element and an end element (its last address + 1), and a leading end element
    /// at zero when the first range does not start there; a range that reaches the top of the
    /// address space has no end element and is flagged open instead.
    pub fn interval_elements(
        &mut self,
        table: &str,
        set: &str,
        ranges: &[(Vec<u8>, Option<Vec<u8>>)],
    ) {
        if ranges.is_empty() {
            return;
        }
        self.request(NFT_MSG_NEWSETELEM, NLM_F_CREATE, |b| {
            attr_str(b, NFTA_SET_ELEM_LIST_TABLE, table);
            attr_str(b, NFTA_SET_ELEM_LIST_SET, set);
            nest(b, NFTA_SET_ELEM_LIST_ELEMENTS, |b| {
                let end = |b: &mut Vec<u8>, key: &[u8]| {
                    nest(b, NFTA_LIST_ELEM, |b| {
                        attr(
                            b,
                            NFTA_SET_ELEM_FLAGS,
                            &NFT_SET_ELEM_INTERVAL_END.to_be_bytes(),
                        );
                        nest(b, NFTA_SET_ELEM_KEY, |b| attr(b, NFTA_DATA_VALUE, key));
                    })
                };
                if ranges[0].0.iter().any(|&x| x != 0) {
                    end(b, &vec![0; ranges[0].0.len()]);
                }
                for (start, stop) in ranges {
                    nest(b, NFTA_LIST_ELEM, |b| {
                        nest(b, NFTA_SET_ELEM_KEY, |b| attr(b, NFTA_DATA_VALUE, start));
                        if stop.is_none() {
                            // NFTNL_UDATA_SET_ELEM_FLAGS: NFTNL_SET_ELEM_F_INTERVAL_OPEN
                            attr(b, NFTA_SET_ELEM_USERDATA, &[1, 4, 1, 0, 0, 0]);
                        }
                    });
                    if let Some(stop) = stop {
                        end(b, stop);
                    }
                }
            });
        });
    }

    /// One nf_tables request of kind `kind` in the `inet` family.
    fn request(&mut self, kind: u16, extra: u16, body: impl FnOnce(&mut Vec<u8>)) {
        self.acks += 1;
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        self.message(ty, NLM_F_REQUEST | NLM_F_ACK | extra, NFPROTO_INET, 0, body);
    }

    pub fn is_empty(&self) -> bool {
        self.acks == 0
    }

    /// The element messages written so far.
    pub fn messages(&self) -> usize {
        self.acks
    }

    /// Sends the transaction on a socket of its own and waits for the kernel's answer. Closing
    /// that socket waits for the kernel's deferred release of the transaction (an RCU grace
    /// period, ~10 ms after a batch that deleted anything): long-lived callers use
    /// [`Socket`] and [`Batch::commit_on`] instead.
    pub fn commit(self) -> io::Result<()> {
        self.commit_on(&mut Socket::open()?)
    }

    /// Sends the transaction on `sock` and waits for the kernel's answer. Only the last message
    /// asks for an acknowledgement: the kernel reports every failed message anyway, before that
    /// one's answer, so a whole table (tens of thousands of messages) does not overflow the
    /// socket's receive buffer with acknowledgements. Answers to an earlier batch (one that
    /// timed out) are told apart by their sequence numbers, which are unique in the process.
    pub fn commit_on(mut self, sock: &mut Socket) -> io::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let (first_seq, last_seq) = self.ack_only_last();
        self.message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            0,
            NFNL_SUBSYS_NFTABLES,
            |_| {},
        );
        let chunks = self.take_chunks();
        let len: usize = chunks.iter().map(Vec::len).sum();
        sock.reserve(len);
        let fd = &sock.fd;
        let iov: Vec<io::IoSlice<'_>> = chunks.iter().map(|c| io::IoSlice::new(c)).collect();
        let sent = sendmsg::<()>(fd.as_raw_fd(), &iov, &[], MsgFlags::empty(), None)?;
        drop(iov);
        // The kernel holds its own copy now.
        drop(chunks);
        if sent != len {
            return Err(io::Error::other("netlink: short send"));
        }
        let ours = |seq: u32| seq.wrapping_sub(first_seq) <= last_seq.wrapping_sub(first_seq);
        let mut first_error = None;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let mut at = 0;
            let mut done = false;
            while at + 16 <= n {
                let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4")) as usize;
                let ty = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2"));
                let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().expect("4"));
                if len < 16 || at + len > n {
                    break;
                }
                if ty == NLMSG_ERROR && len >= 20 && ours(seq) {
                    let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4"));
                    if code != 0 && first_error.is_none() {
                        first_error = Some(io::Error::from_raw_os_error(-code));
                    }
                    done |= seq == last_seq;
                }
                at += align(len);
            }
            if done {
                break;
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every chunk written, the last one included.
    fn take_chunks(&mut self) -> Vec<Vec<u8>> {
        let mut chunks = std::mem::take(&mut self.chunks);
        chunks.push(std::mem::take(&mut self.buf));
        chunks
    }

    /// Clears `NLM_F_ACK` on every message but the last, and returns the first and the last
    /// message's sequence numbers.
    fn ack_only_last(&mut self) -> (u32, u32) {
        let mut last = None;
        let mut first = None;
        for (c, chunk) in self
            .chunks
            .iter_mut()
            .chain(std::iter::once(&mut self.buf))
            .enumerate()
        {
            let mut at = 0;
            while at + 16 <= chunk.len() {
                let len = u32::from_ne_bytes(chunk[at..at + 4].try_into().expect("4")) as usize;
                let flags = u16::from_ne_bytes(chunk[at + 6..at + 8].try_into().expect("2"));
                chunk[at + 6..at + 8].copy_from_slice(&(flags & !NLM_F_ACK).to_ne_bytes());
                let seq = u32::from_ne_bytes(chunk[at + 8..at + 12].try_into().expect("4"));
                first.get_or_insert(seq);
                last = Some((c, at, seq));
                at += align(len);
            }
        }
        let (c, at, last_seq) = last.expect("a batch holds BATCH_BEGIN");
        let chunk = match self.chunks.get_mut(c) {
            Some(chunk) => chunk,
            None => &mut self.buf,
        };
        let flags = u16::from_ne_bytes(chunk[at + 6..at + 8].try_into().expect("2"));
        chunk[at + 6..at + 8].copy_from_slice(&(flags | NLM_F_ACK).to_ne_bytes());
        (first.expect("set with last"), last_seq)
    }

    /// Appends one message: `nlmsghdr`, `nfgenmsg`, then what `body` writes.
    fn message(
        &mut self,
        ty: u16,
        flags: u16,
        family: u8,
        res_id: u16,
        body: impl FnOnce(&mut Vec<u8>),
    ) {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]); // length, below
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        body(&mut self.buf);
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        if self.buf.len() + MESSAGE_MAX > CHUNK {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.chunks.push(full);
        }
    }
}

fn libc_timeval(d: Duration) -> nix::libc::timeval {
    nix::libc::timeval {
        tv_sec: d.as_secs() as _,
        tv_usec: d.subsec_micros() as _,
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

pub(crate) fn attr(b: &mut Vec<u8>, ty: u16, value: &[u8]) {
    let len = 4 + value.len();
    b.extend_from_slice(&(len as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(value);
    b.resize(b.len() + align(len) - len, 0);
}

pub(crate) fn attr_str(b: &mut Vec<u8>, ty: u16, s: &str) {
    // The string and its NUL, written in place (no copy of the string first).
    let len = 4 + s.len() + 1;
    b.extend_from_slice(&(len as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(s.as_bytes());
    b.push(0);
    b.resize(b.len() + align(len) - len, 0);
}

pub(crate) fn nest(b: &mut Vec<u8>, ty: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let start = b.len();
    b.extend_from_slice(&[0; 2]);
    b.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    inner(b);
    let len = (b.len() - start) as u16;
    b[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// One expression of a rule: its name and what `data` writes into `NFTA_EXPR_DATA`.
pub(crate) fn expr(b: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    nest(b, NFTA_LIST_ELEM, |b| {
        attr_str(b, 1, name); // NFTA_EXPR_NAME
        nest(b, 2, data); // NFTA_EXPR_DATA
    });
}

fn verdict(b: &mut Vec<u8>, code: i32, chain: &str) {
    nest(b, NFTA_SET_ELEM_DATA, |b| {
        nest(b, NFTA_DATA_VERDICT, |b| {
            attr(b, NFTA_VERDICT_CODE, &code.to_be_bytes());
            attr_str(b, NFTA_VERDICT_CHAIN, chain);
        })
    });
}

/// Register layouts of the keys and data switchboard's maps use: each part of a concatenation
/// takes a whole number of 32-bit registers.
pub mod layout {
    use std::net::IpAddr;

    use super::Put;

    /// An address, in network order.
    pub fn addr(out: &mut impl Put, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => out.put(&a.octets()),
            IpAddr::V6(a) => out.put(&a.octets()),
        }
    }

    /// A port (or any 16-bit header field), in network order, padded to a register.
    pub fn port(out: &mut impl Put, p: u16) {
        let [hi, lo] = p.to_be_bytes();
        out.put(&[hi, lo, 0, 0]);
    }

    /// An 8-bit field (`meta l4proto`), padded to a register.
    pub fn byte(out: &mut impl Put, v: u8) {
        out.put(&[v, 0, 0, 0]);
    }

    /// A value computed in a register (`numgen`), in host order.
    pub fn word(out: &mut impl Put, v: u32) {
        out.put(&v.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_and_aligned() {
        let mut b = Batch::new();
        b.elements(
            true,
            "t",
            "m",
            [Elem {
                key: {
                    let mut k = Reg::default();
                    k.put(&[1, 2, 3, 4]);
                    k
                },
                data: Some(Data::Goto("c")),
            }],
        );
        // BATCH_BEGIN is 20 bytes; the element message follows at offset 20.
        assert_eq!(u32::from_ne_bytes(b.buf[0..4].try_into().unwrap()), 20);
        let len = u32::from_ne_bytes(b.buf[20..24].try_into().unwrap()) as usize;
        assert_eq!(b.buf.len(), 20 + len);
        assert_eq!(len % 4, 0);
        let ty = u16::from_ne_bytes(b.buf[24..26].try_into().unwrap());
        assert_eq!(ty, (10 << 8) | 12);
        assert_eq!(b.acks, 1);
    }

    #[test]
    fn a_large_batch_is_chunked_whole_messages_and_only_its_last_asks_for_an_ack() {
        let mut b = Batch::new();
        let elems = (0..40_000u32).map(|i| {
            let mut key = Reg::default();
            layout::word(&mut key, i);
            Elem {
                key,
                data: Some(Data::Goto("svc-default/web/tcp/80/int4")),
            }
        });
        b.elements(true, "t", "m", elems);
        assert!(b.chunks.len() >= 2, "{} chunks", b.chunks.len());
        let (first, last) = b.ack_only_last();
        let chunks = b.take_chunks();
        let mut seen = Vec::new();
        for chunk in &chunks {
            assert!(chunk.len() <= CHUNK);
            let mut at = 0;
            while at < chunk.len() {
                let len = u32::from_ne_bytes(chunk[at..at + 4].try_into().unwrap()) as usize;
                let flags = u16::from_ne_bytes(chunk[at + 6..at + 8].try_into().unwrap());
                let seq = u32::from_ne_bytes(chunk[at + 8..at + 12].try_into().unwrap());
                seen.push((seq, flags & NLM_F_ACK != 0));
                at += align(len);
            }
            assert_eq!(at, chunk.len(), "a message spans two chunks");
        }
        // BATCH_BEGIN and one message per 256 elements, in order; the ACK on the last only.
        assert_eq!(seen.len(), 1 + 40_000usize.div_ceil(ELEMENTS_PER_MESSAGE));
        assert_eq!((seen[0].0, seen.last().unwrap().0), (first, last));
        let acked: Vec<u32> = seen.iter().filter(|(_, a)| *a).map(|(s, _)| *s).collect();
        assert_eq!(acked, vec![last]);
    }
}
