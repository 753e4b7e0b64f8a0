//! Retries and their limits, one copy for the pingora path (`service.rs`) and the fast path
//! (`fast/`): the retry budget, failure accounting for outlier ejection, and the Gateway API
//! `timeouts` deadlines.
//!
//! A failed connect always goes to another endpoint (up to `max_retries`); an idempotent
//! request that met a reset, 502 or 503 is sent again only while the retry budget allows.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tables::HttpRule;

use super::backend::PortBalancer;
use super::health::{EndpointState, FailureOutcome, OutlierConfig};
use super::metrics::HttpMetrics;

/// A token bucket that lets retries (other than connect failures) add at most ~20% to the
/// request rate, with a floor of 10 so a quiet proxy can still retry.
pub struct RetryBudget {
    /// Thousandths of a retry.
    tokens: AtomicI64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            tokens: AtomicI64::new(10_000),
        }
    }
}

impl RetryBudget {
    const PER_REQUEST: i64 = 200;
    const PER_RETRY: i64 = 1000;
    const CAP: i64 = 100_000;

    pub fn deposit(&self) {
        let t = self.tokens.fetch_add(Self::PER_REQUEST, Ordering::Relaxed);
        if t > Self::CAP {
            self.tokens.fetch_sub(Self::PER_REQUEST, Ordering::Relaxed);
        }
    }

    pub fn try_withdraw(&self) -> bool {
        let prev = self.tokens.fetch_sub(Self::PER_RETRY, Ordering::Relaxed);
        if prev >= Self::PER_RETRY {
            true
        } else {
            self.tokens.fetch_add(Self::PER_RETRY, Ordering::Relaxed);
            false
        }
    }
}

/// Counts a failed attempt on `state` (an endpoint of `b`) towards its outlier ejection; an
/// ejection is counted in `switchboard_http_ejections_total` and logged.
pub fn record_failure(
    cfg: &OutlierConfig,
    metrics: &HttpMetrics,
    b: &PortBalancer,
    state: &EndpointState,
) {
    if state.record_failure(cfg, || b.may_eject(cfg)) == FailureOutcome::Ejected {
        metrics.ejections.with_label_values(&[&*b.label]).inc();
        tracing::warn!(service = %b.label, endpoint = %state.addr, "endpoint ejected");
    }
}

/// Counts a retry of a request to `service` in `switchboard_http_retries_total` (`reason`:
/// `connect`, `reset`, `status` or `pipeline`).
pub fn count_retry(metrics: &HttpMetrics, service: &str, reason: &str) {
    metrics.retries.with_label_values(&[service, reason]).inc();
}

/// Whether another attempt may go to an endpoint not tried yet: `tried` endpoints of `b` so
/// far, after `retries` retries of at most `max_retries`.
pub fn can_try_another(b: &PortBalancer, tried: usize, retries: u32, max_retries: u32) -> bool {
    tried < b.endpoints.len() && retries < max_retries
}

/// Whether a request whose attempt ended without an answer (a reset, a closed connection) is
/// sent again: it is `idempotent`, `another` endpoint may be tried, and either the retry is
/// `free` (a reused connection closed under it, retried like a failed connect) or the budget
/// allows one (withdrawn here).
pub fn retry_on_reset(idempotent: bool, another: bool, free: bool, budget: &RetryBudget) -> bool {
    idempotent && another && (free || budget.try_withdraw())
}

/// Whether a request answered `code` is sent again: a 502 or 503 to an `idempotent` request,
/// with `another` endpoint to try and a retry in the budget (withdrawn here).
pub fn retry_on_status(code: u16, idempotent: bool, another: bool, budget: &RetryBudget) -> bool {
    matches!(code, 502 | 503) && idempotent && another && budget.try_withdraw()
}

/// `from` plus `ms` milliseconds; no limit for none or zero.
fn after(from: Instant, ms: Option<u64>) -> Option<Instant> {
    ms.filter(|&ms| ms > 0)
        .map(|ms| from + Duration::from_millis(ms))
}

/// Gateway API `timeouts.request` of `rule`: from the request's headers (`start`) to the end of
/// the response, across retries. Zero disables it.
pub fn request_deadline(rule: &HttpRule, start: Instant) -> Option<Instant> {
    after(start, rule.request_timeout_ms)
}

/// The deadline of an attempt that started at `attempt_start` (if one has): the earlier of the
/// request's (`whole`, [`request_deadline`]) and `rule`'s `timeouts.backendRequest` for each
/// attempt on an endpoint. Zero disables the latter.
pub fn attempt_deadline(
    rule: &HttpRule,
    whole: Option<Instant>,
    attempt_start: Option<Instant>,
) -> Option<Instant> {
    let attempt = attempt_start.and_then(|t| after(t, rule.backend_request_timeout_ms));
    match (whole, attempt) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget() {
        let b = RetryBudget::default();
        let mut n = 0;
        while b.try_withdraw() {
            n += 1;
        }
        assert_eq!(n, 10);
        // Five requests earn one retry.
        for _ in 0..5 {
            b.deposit();
        }
        assert!(b.try_withdraw());
        assert!(!b.try_withdraw());
    }

    fn rule(request_ms: Option<u64>, backend_ms: Option<u64>) -> HttpRule {
        HttpRule {
            source: tables::ObjectKey::new(tables::Kind::HttpRoute, "d", "r"),
            rule_index: 0,
            hostnames: vec![],
            matches: vec![],
            filters: vec![],
            backends: vec![],
            request_timeout_ms: request_ms,
            backend_request_timeout_ms: backend_ms,
            attachments: vec![],
            port: None,
            lb_algorithm: None,
            created: None,
            is_default: false,
        }
    }

    /// `timeouts.request` runs from the request's start across attempts, `backendRequest` from
    /// each attempt's; the earlier one wins, and zero or none is no limit.
    #[test]
    fn deadlines() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let attempt = Some(t0 + ms(300));
        let at = |r: &HttpRule, attempt| attempt_deadline(r, request_deadline(r, t0), attempt);
        let both = rule(Some(1000), Some(200));
        assert_eq!(request_deadline(&both, t0), Some(t0 + ms(1000)));
        assert_eq!(at(&both, attempt), Some(t0 + ms(500)));
        assert_eq!(at(&rule(Some(400), Some(200)), attempt), Some(t0 + ms(400)));
        assert_eq!(at(&both, None), Some(t0 + ms(1000)), "no attempt yet");
        assert_eq!(at(&rule(None, Some(200)), attempt), Some(t0 + ms(500)));
        assert_eq!(at(&rule(Some(0), Some(0)), attempt), None, "zero disables");
        assert_eq!(at(&rule(None, None), attempt), None);
    }

    /// The budget is drawn on only when everything else allows the retry.
    #[test]
    fn retry_decisions_withdraw_only_when_allowed() {
        let empty = RetryBudget::default();
        while empty.try_withdraw() {}
        assert!(!retry_on_status(503, true, true, &empty));
        assert!(
            retry_on_reset(true, true, true, &empty),
            "free: no budget needed"
        );
        assert!(!retry_on_reset(true, true, false, &empty));

        let b = RetryBudget::default(); // 10 retries
        for (code, idempotent, another) in [
            (500, true, true),
            (504, true, true),
            (502, false, true),
            (503, true, false),
        ] {
            assert!(!retry_on_status(code, idempotent, another, &b), "{code}");
        }
        assert!(!retry_on_reset(false, true, false, &b));
        assert!(!retry_on_reset(true, false, false, &b));
        assert!(retry_on_status(502, true, true, &b));
        assert!(retry_on_status(503, true, true, &b));
        assert!(retry_on_reset(true, true, false, &b));
        // Three withdrawn above, none by the refused ones.
        let mut left = 0;
        while b.try_withdraw() {
            left += 1;
        }
        assert_eq!(left, 7);
    }
}
