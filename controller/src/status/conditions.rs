//! Conditions and addresses as the API stores them, and the comparison that keeps the writer
//! from writing what is already there.
//!
//! Desired conditions are built without `lastTransitionTime`. Before a write, each takes the
//! stored time of the condition of the same type when its `status` did not change (so the time
//! says when the condition last flipped, as `meta.SetStatusCondition` does), else now. Equality
//! of desired and stored ignores the times, so a status that only differs in them is not
//! written.

use std::net::IpAddr;

use serde_json::{json, Value};

/// A condition as `metav1.Condition`, without `lastTransitionTime`.
pub fn cond(type_: &str, ok: bool, reason: &str, message: &str, generation: i64) -> Value {
    json!({
        "type": type_,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    })
}

/// An address switchboard's Gateways and Ingresses are reached at.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Address {
    Ip(IpAddr),
    Hostname(String),
}

impl Address {
    /// An IP address, else a host name.
    pub fn parse(s: &str) -> Address {
        match s.trim().parse::<IpAddr>() {
            Ok(ip) => Address::Ip(ip),
            Err(_) => Address::Hostname(s.trim().to_ascii_lowercase()),
        }
    }

    /// As a Gateway's `status.addresses[]` entry.
    pub fn gateway_json(&self) -> Value {
        match self {
            Address::Ip(ip) => json!({"type": "IPAddress", "value": ip.to_string()}),
            Address::Hostname(h) => json!({"type": "Hostname", "value": h}),
        }
    }

    /// As an Ingress's `status.loadBalancer.ingress[]` entry.
    pub fn ingress_json(&self) -> Value {
        match self {
            Address::Ip(ip) => json!({"ip": ip.to_string()}),
            Address::Hostname(h) => json!({"hostname": h}),
        }
    }
}

/// `v` without any `lastTransitionTime`, for comparing.
pub fn without_times(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "lastTransitionTime")
                .map(|(k, v)| (k.clone(), without_times(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_times).collect()),
        other => other.clone(),
    }
}

/// Whether the stored value says what the desired one says (times aside). Keys the desired
/// value has and the stored one lacks count as empty (`[]`, `0`, `""`).
pub fn same(desired: &Value, stored: Option<&Value>) -> bool {
    let Some(stored) = stored else {
        return false;
    };
    match (desired, stored) {
        (Value::Object(d), Value::Object(s)) => d.iter().all(|(k, dv)| match s.get(k) {
            Some(sv) => same(dv, Some(sv)),
            None => is_empty(dv),
        }),
        (Value::Array(d), Value::Array(s)) => {
            d.len() == s.len() && d.iter().zip(s).all(|(dv, sv)| same(dv, Some(sv)))
        }
        _ => without_times(desired) == without_times(stored),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

/// Gives each desired condition its `lastTransitionTime`: the stored one when the condition
/// of that type kept its status, else `now`.
pub fn stamp(desired: &mut Value, stored: Option<&Value>, now: &str) {
    let Some(conds) = desired.as_array_mut() else {
        return;
    };
    let old = stored.and_then(Value::as_array);
    for c in conds {
        let prev = old.and_then(|o| {
            o.iter()
                .find(|s| s.get("type") == c.get("type") && s.get("status") == c.get("status"))
        });
        let time = prev
            .and_then(|p| p.get("lastTransitionTime"))
            .cloned()
            .unwrap_or_else(|| json!(now));
        c["lastTransitionTime"] = time;
    }
}

/// The current time as the API writes it (RFC 3339, seconds).
pub fn now() -> String {
    let t = jiff::Timestamp::now();
    t.round(jiff::Unit::Second).unwrap_or(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_status_with_times_is_the_same() {
        let mut d =
            json!({"conditions": [cond("Accepted", true, "Accepted", "", 2)], "listeners": []});
        let s = json!({"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
            "message": "", "observedGeneration": 2, "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        assert!(same(&d, Some(&s)));
        stamp(
            &mut d["conditions"],
            s.get("conditions"),
            "2026-12-01T00:00:00Z",
        );
        assert_eq!(
            d["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        let flipped =
            json!({"conditions": [cond("Accepted", false, "NotAllowedByListeners", "", 2)]});
        assert!(!same(&flipped, Some(&s)));
        let mut f = flipped["conditions"].clone();
        stamp(&mut f, s.get("conditions"), "2026-12-01T00:00:00Z");
        assert_eq!(f[0]["lastTransitionTime"], "2026-12-01T00:00:00Z");
        assert!(!same(&d, None));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("10.0.0.1").gateway_json()["type"],
            "IPAddress"
        );
        assert_eq!(
            Address::parse("lb.Example.com").ingress_json()["hostname"],
            "lb.example.com"
        );
    }
}
