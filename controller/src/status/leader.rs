//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`
//! does it, so that exactly one replica of the DaemonSet writes status.
//!
//! Every `retry` each replica reads the Lease. The holder renews `renewTime`; another replica
//! takes the Lease over only when its record (holder, renew time, transitions) has not changed
//! for `lease_duration` by this replica's own clock — clocks of different nodes are never
//! compared. Every write is a replace guarded by the `resourceVersion` read just before (or a
//! create when there is no Lease), so of two replicas racing for it exactly one wins; the other
//! gets 409 Conflict and stays a follower. A leader that cannot renew for `renew_deadline`
//! (shorter than `lease_duration`) steps down before anyone else may take over. On shutdown the
//! leader empties `holderIdentity`, so a standby takes over at its next retry instead of after
//! the lease duration.
//!
//! Leadership is published on a `watch` channel and in the `switchboard_leader` gauge, and each
//! change is logged at info. Nothing here touches the data plane: a replica serves the same
//! whether it leads or not.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use prometheus::IntGauge;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::kubernetes::FIELD_MANAGER;

/// Timing and naming of the Lease (client-go's defaults: 15 s, 10 s, 2 s).
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity in `holderIdentity` (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What this replica last saw of the Lease, to tell an expired holder from a live one.
struct Observed {
    /// (holder, renewTime, transitions) as last read.
    record: (Option<String>, Option<String>, i32),
    /// When `record` last changed, by this replica's clock.
    since: Instant,
}

/// Runs the election until `stop` fires; then releases the Lease if held. `leader` carries
/// whether this replica holds it.
pub async fn run(
    api: Api<Lease>,
    cfg: LeaseConfig,
    leader: watch::Sender<bool>,
    gauge: IntGauge,
    mut stop: watch::Receiver<bool>,
) {
    let mut observed: Option<Observed> = None;
    let mut last_renew: Option<Instant> = None;
    let mut leading = false;
    loop {
        // Bounded, as client-go bounds each renewal by its deadline: a request that hangs must
        // not keep a leader that can no longer renew believing it leads.
        let attempt = try_acquire_or_renew(&api, &cfg, &mut observed);
        let outcome =
            match tokio::time::timeout(cfg.retry.max(Duration::from_secs(1)) * 2, attempt).await {
                Ok(outcome) => outcome,
                Err(_) => Err(kube::Error::Service("lease request timed out".into())),
            };
        let now = Instant::now();
        match outcome {
            Ok(true) => last_renew = Some(now),
            Ok(false) => last_renew = None,
            Err(e) => {
                tracing::debug!(lease = %cfg.name, error = %e, "lease: cannot read or write");
                // A leader keeps leading through short API errors, up to the renew deadline.
                if last_renew.is_some_and(|t| now.duration_since(t) >= cfg.renew_deadline) {
                    last_renew = None;
                }
            }
        }
        let now_leading = last_renew.is_some();
        if now_leading != leading {
            leading = now_leading;
            gauge.set(leading as i64);
            let _ = leader.send(leading);
            if leading {
                tracing::info!(lease = %format!("{}/{}", cfg.namespace, cfg.name), identity = %cfg.identity, "became the leader: writing status");
            } else {
                tracing::info!(lease = %format!("{}/{}", cfg.namespace, cfg.name), identity = %cfg.identity, "no longer the leader: stopped writing status");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.retry) => {}
            _ = stop.changed() => break,
        }
    }
    if leading {
        gauge.set(0);
        let _ = leader.send(false);
        release(&api, &cfg).await;
    }
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn record_of(spec: &LeaseSpec) -> (Option<String>, Option<String>, i32) {
    (
        spec.holder_identity.clone().filter(|h| !h.is_empty()),
        spec.renew_time.as_ref().map(|t| t.0.to_string()),
        spec.lease_transitions.unwrap_or(0),
    )
}

/// One round: `Ok(true)` when this replica holds the Lease after it.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let duration = cfg.lease_duration.as_secs().max(1) as i32;
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(duration),
                acquire_time: Some(now_micro()),
                renew_time: Some(now_micro()),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&pp, &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let record = record_of(&spec);
    let now = Instant::now();
    if observed.as_ref().is_none_or(|o| o.record != record) {
        *observed = Some(Observed {
            record: record.clone(),
            since: now,
        });
    }
    let holder = record.0.as_deref();
    let mine = holder == Some(cfg.identity.as_str());
    let held_for = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(s.max(1) as u64))
        .unwrap_or(cfg.lease_duration);
    let expired = holder.is_none()
        || observed
            .as_ref()
            .is_some_and(|o| now.duration_since(o.since) >= held_for);
    if !mine && !expired {
        return Ok(false);
    }
    let mut next = spec;
    if !mine {
        next.holder_identity = Some(cfg.identity.clone());
        next.acquire_time = Some(now_micro());
        next.lease_transitions = Some(record.2 + 1);
    }
    next.renew_time = Some(now_micro());
    next.lease_duration_seconds = Some(duration);
    lease.spec = Some(next);
    // The resourceVersion read above guards the replace: a racing writer makes it 409.
    match api.replace(&cfg.name, &pp, &lease).await {
        Ok(l) => {
            if let Some(spec) = &l.spec {
                *observed = Some(Observed {
                    record: record_of(spec),
                    since: Instant::now(),
                });
            }
            Ok(true)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives the Lease up (empty holder), so a standby takes over at its next retry.
async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
        return;
    };
    let Some(spec) = lease.spec.as_mut() else {
        return;
    };
    if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
        return;
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now_micro());
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.replace(&cfg.name, &pp, &lease).await {
        Ok(_) => tracing::info!(lease = %cfg.name, "released the lease"),
        Err(e) => {
            tracing::warn!(lease = %cfg.name, error = %e, "cannot release the lease; a standby takes over when it expires")
        }
    }
}
