//! Leader election on a `coordination.k8s.io/v1` Lease: of the mirror's
//! replicas, only the holder writes.
//!
//! As client-go's leaderelection: a candidate takes the Lease over only after
//! it has seen the same record, unchanged, for a whole `lease_duration` on its
//! own clock (no clock comparison between replicas); the holder renews every
//! `retry_period` and stops writing once it has failed to renew for
//! `renew_deadline`, which is shorter than `lease_duration`, so two replicas
//! never write at the same time.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;

/// Lease timing.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTiming {
    /// How long a record must stay unchanged before another replica takes over.
    pub lease_duration: Duration,
    /// How long the holder keeps writing without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the holder renews and candidates look.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    /// 10 s / 7 s / 2 s: a dead holder is replaced within about 14 s.
    fn default() -> Self {
        LeaseTiming {
            lease_duration: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(7),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
}

/// The last record seen and when it was first seen unchanged.
struct Observed {
    record: (Option<String>, Option<String>),
    since: Instant,
}

impl Elector {
    /// An elector for Lease `name` in `namespace`, as `identity`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: LeaseTiming,
    ) -> Elector {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timing,
        }
    }

    /// Runs until `shutdown` flips; `leader` says whether this replica may write.
    /// On shutdown a held Lease is released so another replica takes over at once.
    pub async fn run(self, leader: watch::Sender<bool>, mut shutdown: watch::Receiver<bool>) {
        let mut observed: Option<Observed> = None;
        let mut last_renew: Option<Instant> = None;
        loop {
            let held = self.try_acquire_or_renew(&mut observed).await;
            let now = Instant::now();
            match held {
                Ok(true) => last_renew = Some(now),
                Ok(false) => last_renew = None,
                Err(e) => tracing::warn!(lease = %self.name, error = %e, "lease update failed"),
            }
            let is_leader =
                last_renew.is_some_and(|t| now.duration_since(t) < self.timing.renew_deadline);
            if *leader.borrow() != is_leader {
                tracing::info!(lease = %self.name, identity = %self.identity, leader = is_leader, "leadership changed");
                leader.send_replace(is_leader);
            }
            if !is_leader {
                last_renew = None;
            }
            tokio::select! {
                _ = tokio::time::sleep(self.timing.retry_period) => {}
                _ = shutdown.changed() => {
                    if *leader.borrow() {
                        leader.send_replace(false);
                        self.release().await;
                    }
                    return;
                }
            }
        }
    }

    /// One round: `Ok(true)` when this replica holds the Lease afterwards.
    async fn try_acquire_or_renew(
        &self,
        observed: &mut Option<Observed>,
    ) -> Result<bool, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let secs = i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (
            holder.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_string()),
        );
        let seen = Instant::now();
        let unchanged_for = match observed {
            Some(o) if o.record == record => seen.duration_since(o.since),
            _ => {
                *observed = Some(Observed {
                    record,
                    since: seen,
                });
                Duration::ZERO
            }
        };
        let mine = holder.as_deref() == Some(self.identity.as_str());
        let expired = holder.is_none() || unchanged_for >= self.timing.lease_duration;
        if !mine && !expired {
            return Ok(false);
        }
        let mut next = spec;
        if !mine {
            next.holder_identity = Some(self.identity.clone());
            next.acquire_time = Some(now.clone());
            next.lease_transitions = Some(next.lease_transitions.unwrap_or(0).saturating_add(1));
        }
        next.renew_time = Some(now);
        next.lease_duration_seconds = Some(secs);
        lease.spec = Some(next);
        // The resourceVersion read above makes this a compare-and-swap: of two
        // candidates, one gets 409 Conflict.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "lease released"),
            Err(e) => tracing::warn!(lease = %self.name, error = %e, "cannot release lease"),
        }
    }
}
