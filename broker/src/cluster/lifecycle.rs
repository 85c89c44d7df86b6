//! This broker's life in the cluster (Kafka's `BrokerLifecycleManager`).
//!
//! It registers with the active controller under a fresh incarnation id (so a restarted process
//! is told apart from the one before), hands over a pre-cluster `topics.json` once, then
//! heartbeats with the metadata offset it has applied. The controller fences a broker whose
//! heartbeats stop for `broker_session_timeout_ms` and unfences it once it has caught up with
//! the metadata log up to its own registration; while fenced it leads nothing. Once caught up,
//! stray replica directories are set aside. A refused heartbeat (stale epoch: the controller no
//! longer knows this incarnation) makes it register again.
//!
//! On SIGTERM, [`Lifecycle::controlled_shutdown`] asks the controller to move leadership away
//! and waits until it says the broker may go (or `controlled_shutdown_timeout_ms` passes), so
//! clients move to new leaders before this process stops answering.

use std::sync::Arc;
use std::time::Duration;

use sluice_replication::controller::api::{ControllerAnswer, ControllerCall, ControllerFailure};
use sluice_replication::controller::ControllerError;
use sluice_replication::metadata::Endpoints;
use tokio::sync::watch;

use super::controller_client::ControllerClient;
use crate::topics::TopicManager;

/// How a call to the controller is bounded (each heartbeat, each registration attempt).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeat pace while fenced: unfencing should not wait a full interval.
const FENCED_INTERVAL: Duration = Duration::from_millis(200);

/// What the controller last said about this broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BrokerState {
    pub broker_epoch: Option<i64>,
    pub fenced: bool,
    pub caught_up: bool,
}

pub struct Lifecycle {
    client: Arc<ControllerClient>,
    topics: Arc<TopicManager>,
    broker_id: i32,
    incarnation_id: uuid::Uuid,
    endpoints: Endpoints,
    rack: Option<String>,
    heartbeat_interval: Duration,
    shutdown_timeout: Duration,
    state: watch::Sender<BrokerState>,
    /// True from this process's first unfencing on (a later fencing does not reset it).
    started: watch::Sender<bool>,
    shutting_down: std::sync::atomic::AtomicBool,
}

impl Lifecycle {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Arc<ControllerClient>,
        topics: Arc<TopicManager>,
        broker_id: i32,
        endpoints: Endpoints,
        rack: Option<String>,
        heartbeat_interval: Duration,
        shutdown_timeout: Duration,
    ) -> Lifecycle {
        Lifecycle {
            client,
            topics,
            broker_id,
            incarnation_id: crate::topics::random_uuid(),
            endpoints,
            rack,
            heartbeat_interval,
            shutdown_timeout,
            state: watch::channel(BrokerState::default()).0,
            started: watch::channel(false).0,
            shutting_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn broker_id(&self) -> i32 {
        self.broker_id
    }

    pub fn state(&self) -> BrokerState {
        *self.state.borrow()
    }

    pub fn watch(&self) -> watch::Receiver<BrokerState> {
        self.state.subscribe()
    }

    /// Becomes true once this broker has been unfenced for the first time since it started.
    pub fn watch_started(&self) -> watch::Receiver<bool> {
        self.started.subscribe()
    }

    /// Registers, then heartbeats until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut strays_checked = false;
        loop {
            if *stop.borrow()
                || self
                    .shutting_down
                    .load(std::sync::atomic::Ordering::Acquire)
            {
                return;
            }
            let pause = match self.state().broker_epoch {
                None => match self.register().await {
                    Ok(()) => Duration::ZERO,
                    Err(e) => {
                        tracing::warn!(error = %e, "broker registration failed; retrying");
                        Duration::from_millis(500)
                    }
                },
                Some(epoch) => match self.heartbeat(epoch, false).await {
                    Ok(s) => {
                        if s.caught_up && !strays_checked {
                            strays_checked = true;
                            let t = self.topics.clone();
                            let _ = tokio::task::spawn_blocking(move || t.set_aside_strays()).await;
                        }
                        if s.fenced {
                            FENCED_INTERVAL
                        } else {
                            self.heartbeat_interval
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "heartbeat failed");
                        FENCED_INTERVAL.max(self.heartbeat_interval / 4)
                    }
                },
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }

    async fn register(&self) -> Result<(), ControllerFailure> {
        let call = ControllerCall::RegisterBroker {
            broker_id: self.broker_id,
            incarnation_id: self.incarnation_id,
            endpoints: self.endpoints.clone(),
            rack: self.rack.clone(),
        };
        let (answer, offset) = self.client.call(call, CALL_TIMEOUT).await?;
        let ControllerAnswer::BrokerEpoch(epoch) = answer else {
            return Err(ControllerFailure::Unavailable(format!(
                "unexpected answer to RegisterBroker: {answer:?}"
            )));
        };
        tracing::info!(
            broker_epoch = epoch,
            metadata_offset = offset,
            incarnation = %self.incarnation_id,
            "registered with the controller"
        );
        self.state.send_modify(|s| {
            *s = BrokerState {
                broker_epoch: Some(epoch),
                fenced: true,
                caught_up: false,
            }
        });
        if let Some(legacy) = self.topics.legacy_topics() {
            let names: Vec<String> = legacy.iter().map(|t| t.name.clone()).collect();
            let call = ControllerCall::ImportTopics {
                broker_id: self.broker_id,
                topics: legacy,
            };
            let (answer, offset) = self.client.call(call, CALL_TIMEOUT).await?;
            self.client.wait_for_offset(offset, CALL_TIMEOUT).await;
            tracing::info!(
                ?answer,
                found = ?names,
                "handed the single-node topics.json over to the controller"
            );
            if let Err(e) = self.topics.legacy_imported() {
                tracing::error!(error = %e, "cannot retire topics.json (it will be offered again)");
            }
        }
        Ok(())
    }

    async fn heartbeat(
        &self,
        epoch: i64,
        want_shutdown: bool,
    ) -> Result<BrokerState, ControllerFailure> {
        let call = ControllerCall::Heartbeat {
            broker_id: self.broker_id,
            broker_epoch: epoch,
            metadata_offset: self.client.quorum().image().offset,
            want_shutdown,
        };
        // A heartbeat that waits longer than an interval is worth less than the next one (and
        // a paused controller must not keep this broker from reaching the new one).
        let within = self.heartbeat_interval.max(Duration::from_secs(1));
        match self.client.call(call, within).await {
            Ok((ControllerAnswer::Heartbeat(r), offset)) => {
                let before = self.state();
                if before.fenced && !r.is_fenced {
                    // Unfenced: act on it (the replica manager takes the leadership that came
                    // with it) before saying so.
                    let mut synced = self.topics.watch_synced();
                    let _ =
                        tokio::time::timeout(CALL_TIMEOUT, synced.wait_for(|o| *o >= offset)).await;
                }
                let now = BrokerState {
                    broker_epoch: Some(epoch),
                    fenced: r.is_fenced,
                    caught_up: r.is_caught_up,
                };
                if before.fenced != now.fenced {
                    if now.fenced {
                        tracing::warn!("this broker is fenced");
                    } else {
                        tracing::info!("broker is unfenced");
                    }
                }
                self.state.send_replace(now);
                if !now.fenced {
                    self.started
                        .send_if_modified(|s| !std::mem::replace(s, true));
                }
                if r.should_shutdown {
                    return Ok(BrokerState {
                        broker_epoch: None,
                        ..now
                    });
                }
                Ok(now)
            }
            Ok((other, _)) => Err(ControllerFailure::Unavailable(format!(
                "unexpected answer to a heartbeat: {other:?}"
            ))),
            Err(ControllerFailure::Refused(
                e @ (ControllerError::StaleBrokerEpoch { .. } | ControllerError::UnknownBroker(_)),
            )) => {
                // The controller no longer knows this incarnation: register again.
                tracing::warn!(error = %e, "heartbeat refused; registering again");
                self.state.send_replace(BrokerState::default());
                Err(ControllerFailure::Refused(e))
            }
            Err(e) => Err(e),
        }
    }

    /// Moves leadership away from this broker before it exits; returns once the controller
    /// agrees it may go, or after `controlled_shutdown_timeout_ms`.
    pub async fn controlled_shutdown(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        let Some(epoch) = self.state().broker_epoch else {
            return;
        };
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        tracing::info!("controlled shutdown: moving leadership away");
        loop {
            match self.heartbeat(epoch, true).await {
                // `broker_epoch: None` marks the controller's go-ahead.
                Ok(s) if s.broker_epoch.is_none() => {
                    tracing::info!("controlled shutdown complete");
                    return;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "controlled shutdown heartbeat failed"),
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    "controlled shutdown did not complete in time; exiting anyway (the session timeout will fence this broker)"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
