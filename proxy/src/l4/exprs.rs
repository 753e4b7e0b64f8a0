//! nf_tables expressions as netlink attributes (`NFTA_EXPR_*` inside a rule's expression list),
//! written the way nft 1.0 writes them for the same text: registers, byte orders and lengths
//! included. `rule.rs` builds service chains from these; `netlink_full.rs` the fixed chains.

use super::netlink::{attr, attr_str, expr, nest};

/// The verdict register and the 128-bit registers.
pub const REG_VERDICT: u32 = 0;
pub const REG_1: u32 = 1;
pub const REG_2: u32 = 2;
/// 32-bit registers: `REG32_00` overlays `REG_1`.
pub const REG32_01: u32 = 9;
pub const REG32_02: u32 = 10;
pub const REG32_05: u32 = 13;

pub const META_MARK: u32 = 3;
pub const META_NFPROTO: u32 = 15;
pub const META_L4PROTO: u32 = 16;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;
pub const NAT_PROTO_SPECIFIED: u32 = 2;

/// `nft_payload_bases`.
pub const BASE_NETWORK: u32 = 1;
pub const BASE_TRANSPORT: u32 = 2;

/// `nft_ct_keys`.
pub const CT_STATE: u32 = 0;
pub const CT_DIRECTION: u32 = 1;
pub const CT_STATUS: u32 = 2;

/// `nft_cmp_ops`.
pub const CMP_EQ: u32 = 0;
pub const CMP_NEQ: u32 = 1;

/// Verdict codes (`NF_DROP`, `NFT_JUMP`).
pub const VERDICT_DROP: i32 = 0;
pub const VERDICT_ACCEPT: i32 = 1;
pub const VERDICT_JUMP: i32 = -3;

/// A 32-bit attribute, in network order as nf_tables reads them.
pub fn u32_attr(b: &mut Vec<u8>, ty: u16, v: u32) {
    attr(b, ty, &v.to_be_bytes());
}

/// `NFTA_DATA_VALUE` inside attribute `ty`.
pub fn data(b: &mut Vec<u8>, ty: u16, v: &[u8]) {
    nest(b, ty, |b| attr(b, 1, v));
}

/// `meta load KEY => reg 1`.
pub fn meta_load(b: &mut Vec<u8>, key: u32) {
    meta_load_to(b, key, REG_1);
}

pub fn meta_load_to(b: &mut Vec<u8>, key: u32, reg: u32) {
    expr(b, "meta", |b| {
        u32_attr(b, 2, key); // KEY
        u32_attr(b, 1, reg); // DREG
    });
}

/// `meta set KEY with reg 1`.
pub fn meta_set(b: &mut Vec<u8>, key: u32) {
    expr(b, "meta", |b| {
        u32_attr(b, 2, key); // KEY
        u32_attr(b, 3, REG_1); // SREG
    });
}

/// `cmp eq reg 1 V` (or `neq`).
pub fn cmp_eq(b: &mut Vec<u8>, v: &[u8], negate: bool) {
    expr(b, "cmp", |b| {
        u32_attr(b, 1, REG_1); // SREG
        u32_attr(b, 2, if negate { CMP_NEQ } else { CMP_EQ }); // OP
        data(b, 3, v);
    });
}

/// `meta load nfproto => reg 1; cmp eq reg 1 FAMILY`: the match nft adds before a network
/// header field in an `inet` table.
pub fn nfproto(b: &mut Vec<u8>, v6: bool) {
    meta_load(b, META_NFPROTO);
    cmp_eq(b, &[if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }], false);
}

/// `meta load l4proto => reg 1; cmp eq reg 1 PROTO`.
pub fn l4proto(b: &mut Vec<u8>, proto: u8) {
    meta_load(b, META_L4PROTO);
    cmp_eq(b, &[proto], false);
}

/// `payload load LEN @ BASE + OFFSET => reg`.
pub fn payload(b: &mut Vec<u8>, reg: u32, base: u32, offset: u32, len: u32) {
    expr(b, "payload", |b| {
        u32_attr(b, 1, reg); // DREG
        u32_attr(b, 2, base);
        u32_attr(b, 3, offset);
        u32_attr(b, 4, len);
    });
}

/// `bitwise reg 1 = (reg 1 & MASK) ^ XOR` over `mask.len()` bytes.
pub fn bitwise(b: &mut Vec<u8>, mask: &[u8], xor: &[u8]) {
    expr(b, "bitwise", |b| {
        u32_attr(b, 1, REG_1); // SREG
        u32_attr(b, 2, REG_1); // DREG
        u32_attr(b, 3, mask.len() as u32); // LEN
        data(b, 4, mask);
        data(b, 5, xor);
    });
}

/// `KEY & BITS == BITS` on a 32-bit value in reg 1 (`meta mark & M == M`), or `!= 0` when
/// `nonzero` (`ct state new`, `ct status dnat`).
pub fn bits_set(b: &mut Vec<u8>, bits: u32, nonzero: bool) {
    bitwise(b, &bits.to_ne_bytes(), &[0; 4]);
    if nonzero {
        cmp_eq(b, &[0; 4], true);
    } else {
        cmp_eq(b, &bits.to_ne_bytes(), false);
    }
}

pub fn immediate(b: &mut Vec<u8>, reg: u32, v: &[u8]) {
    expr(b, "immediate", |b| {
        u32_attr(b, 1, reg); // DREG
        data(b, 2, v);
    });
}

/// `immediate reg 0 CODE[ -> CHAIN]`: a verdict.
pub fn verdict(b: &mut Vec<u8>, code: i32, chain: Option<&str>) {
    expr(b, "immediate", |b| {
        u32_attr(b, 1, REG_VERDICT); // DREG
        nest(b, 2, |b| {
            nest(b, 2, |b| {
                // NFTA_DATA_VERDICT
                attr(b, 1, &code.to_be_bytes()); // CODE
                if let Some(c) = chain {
                    attr_str(b, 2, c); // CHAIN
                }
            })
        });
    });
}

/// `lookup reg 1 set SET[ dreg D]`.
pub fn lookup(b: &mut Vec<u8>, set: &str, dreg: Option<u32>) {
    lookup_expr(b, set, dreg, false);
}

/// `lookup reg 1 set SET 0x1`: matches what is *not* in `SET`.
pub fn lookup_not(b: &mut Vec<u8>, set: &str) {
    lookup_expr(b, set, None, true);
}

fn lookup_expr(b: &mut Vec<u8>, set: &str, dreg: Option<u32>, negate: bool) {
    expr(b, "lookup", |b| {
        attr_str(b, 1, set); // SET
        u32_attr(b, 2, REG_1); // SREG
        if let Some(d) = dreg {
            u32_attr(b, 3, d); // DREG
        }
        if negate {
            u32_attr(b, 5, 1); // FLAGS: NFT_LOOKUP_F_INV
        }
    });
}

/// `numgen reg 1 = random mod N offset O`.
pub fn numgen_random(b: &mut Vec<u8>, modulus: u32, offset: u32) {
    expr(b, "numgen", |b| {
        u32_attr(b, 1, REG_1); // DREG
        u32_attr(b, 2, modulus); // MODULUS
        u32_attr(b, 3, 1); // TYPE: NFT_NG_RANDOM
        u32_attr(b, 4, offset); // OFFSET
    });
}

/// `FAM saddr`: `meta nfproto FAM` (nft's dependency in an `inet` table), then the source
/// address into reg 1 (4 bytes at 12, or 16 at 8).
pub fn saddr(b: &mut Vec<u8>, v6: bool) {
    nfproto(b, v6);
    let (offset, len) = if v6 { (8, 16) } else { (12, 4) };
    payload(b, REG_1, BASE_NETWORK, offset, len);
}

/// `meta mark set meta mark | MARK`.
pub fn set_mark(b: &mut Vec<u8>, mark: u32) {
    meta_load(b, META_MARK);
    bitwise(b, &(!mark).to_ne_bytes(), &mark.to_ne_bytes());
    meta_set(b, META_MARK);
}

/// `ct load KEY => reg 1`.
pub fn ct_load(b: &mut Vec<u8>, key: u32) {
    expr(b, "ct", |b| {
        u32_attr(b, 1, REG_1); // DREG
        u32_attr(b, 2, key); // KEY
    });
}

/// `fib daddr type => reg 1`.
pub fn fib_daddr_type(b: &mut Vec<u8>) {
    fib_type(b, 2); // NFTA_FIB_F_DADDR
}

/// `fib saddr type => reg 1`.
pub fn fib_saddr_type(b: &mut Vec<u8>) {
    fib_type(b, 1); // NFTA_FIB_F_SADDR
}

fn fib_type(b: &mut Vec<u8>, flags: u32) {
    expr(b, "fib", |b| {
        u32_attr(b, 1, REG_1); // DREG
        u32_attr(b, 2, 3); // RESULT: NFT_FIB_RESULT_ADDRTYPE
        u32_attr(b, 3, flags);
    });
}

/// `dnat FAMILY addr_min reg A proto_min reg P[ flags F]`.
pub fn nat(b: &mut Vec<u8>, family: u8, addr: u32, proto: u32, flags: Option<u32>) {
    expr(b, "nat", |b| {
        u32_attr(b, 1, 1); // TYPE: NFT_NAT_DNAT
        u32_attr(b, 2, u32::from(family));
        u32_attr(b, 3, addr); // REG_ADDR_MIN
        u32_attr(b, 5, proto); // REG_PROTO_MIN
        if let Some(f) = flags {
            u32_attr(b, 7, f);
        }
    });
}

/// `immediate reg 1 PORT; tproxy FAMILY port reg 1`.
pub fn tproxy(b: &mut Vec<u8>, v6: bool, port: u16) {
    immediate(b, REG_1, &port.to_be_bytes());
    expr(b, "tproxy", |b| {
        u32_attr(
            b,
            1,
            u32::from(if v6 { NFPROTO_IPV6 } else { NFPROTO_IPV4 }),
        ); // FAMILY
        u32_attr(b, 3, REG_1); // REG_PORT
    });
}

/// `immediate reg 1 PORT; redir proto_min reg 1 flags 0x2`.
pub fn redirect(b: &mut Vec<u8>, port: u16) {
    immediate(b, REG_1, &port.to_be_bytes());
    expr(b, "redir", |b| {
        u32_attr(b, 1, REG_1); // REG_PROTO_MIN
        u32_attr(b, 3, NAT_PROTO_SPECIFIED); // FLAGS
    });
}

pub fn masquerade(b: &mut Vec<u8>) {
    expr(b, "masq", |_| {});
}

/// `counter name NAME`: a reference to a named counter.
pub fn counter_ref(b: &mut Vec<u8>, name: &str) {
    expr(b, "objref", |b| {
        u32_attr(b, 1, 1); // IMM_TYPE: NFT_OBJECT_COUNTER
        attr_str(b, 2, name); // IMM_NAME
    });
}

/// `reject with tcp reset` (`tcp`) or `reject` (ICMPx port unreachable).
pub fn reject(b: &mut Vec<u8>, tcp: bool) {
    expr(b, "reject", |b| {
        if tcp {
            u32_attr(b, 1, 1); // TYPE: NFT_REJECT_TCP_RST
        } else {
            u32_attr(b, 1, 2); // TYPE: NFT_REJECT_ICMPX_UNREACH
            attr(b, 2, &[1]); // ICMP_CODE: NFT_REJECT_ICMPX_PORT_UNREACH
        }
    });
}
