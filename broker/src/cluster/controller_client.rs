//! Reaching the active controller from any broker.
//!
//! The controller is whichever voter leads the metadata quorum; this broker learns who from its
//! own voter's status. A call goes to this broker's [`ActiveController`] directly when it leads,
//! else over `BrokerInternal/Controller` to the leader's `controller_addr`. While there is no
//! leader, or the one asked says it is not (leadership moved), the call waits for the status to
//! change and tries again, up to its timeout — safe, because a `NotController` answer means
//! nothing was done. A call whose outcome is unknown (the connection broke mid-call, leadership
//! changed under the proposal) is not retried: it is reported, as Kafka reports a timeout.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::internal::v1::broker_internal_client::BrokerInternalClient;
use sluice_proto::internal::v1::ControllerRequest;
use sluice_replication::controller::active::ActiveController;
use sluice_replication::controller::api::{
    ControllerAnswer, ControllerCall, ControllerFailure, ControllerResponse,
};
use sluice_replication::controller::driver::QuorumHandle;
use sluice_replication::metadata::MetadataImage;
use tokio::sync::Mutex;
use tonic::transport::Channel;

pub struct ControllerClient {
    node_id: u64,
    quorum: QuorumHandle,
    active: Arc<ActiveController>,
    /// Voter id -> `host:port` of its `controller_addr`.
    voters: HashMap<u64, String>,
    channels: Mutex<HashMap<u64, Channel>>,
}

/// A remote call that did not get an answer.
enum Transport {
    /// Not connected: nothing was sent.
    NotSent(String),
    /// Sent, then failed: the outcome is unknown.
    Unknown(String),
}

impl ControllerClient {
    pub fn new(
        node_id: u64,
        quorum: QuorumHandle,
        active: Arc<ActiveController>,
        voters: &[(u64, String)],
    ) -> ControllerClient {
        ControllerClient {
            node_id,
            quorum,
            active,
            voters: voters.iter().cloned().collect(),
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub fn quorum(&self) -> &QuorumHandle {
        &self.quorum
    }

    /// Sends `call` to the active controller; returns its answer and the metadata offset at
    /// which its effects are applied.
    pub async fn call(
        &self,
        call: ControllerCall,
        timeout: Duration,
    ) -> Result<(ControllerAnswer, u64), ControllerFailure> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut status = self.quorum.watch_status();
        let mut last_problem = String::from("no controller has been elected");
        loop {
            let leader = status.borrow_and_update().leader;
            match leader {
                Some(l) if l == self.node_id => {
                    let r = self.active.call(call.clone()).await;
                    match r.result {
                        Err(ControllerFailure::NotController { .. }) => {
                            last_problem = "leadership is moving".into();
                        }
                        other => return other.map(|a| (a, r.metadata_offset)),
                    }
                }
                Some(l) => match self
                    .remote(
                        l,
                        &call,
                        deadline.saturating_duration_since(tokio::time::Instant::now()),
                    )
                    .await
                {
                    Ok(r) => match r.result {
                        Err(ControllerFailure::NotController { .. }) => {
                            last_problem = format!("voter {l} is no longer the controller");
                        }
                        other => return other.map(|a| (a, r.metadata_offset)),
                    },
                    Err(Transport::NotSent(e)) => {
                        last_problem = format!("controller {l} is unreachable: {e}");
                    }
                    Err(Transport::Unknown(e)) => {
                        return Err(ControllerFailure::Unavailable(format!(
                            "the call to controller {l} failed after it was sent: {e}"
                        )))
                    }
                },
                None => {}
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(ControllerFailure::Unavailable(format!(
                    "no answer from an active controller within {} ms ({last_problem})",
                    timeout.as_millis()
                )));
            }
            // Wake on a leadership change, or retry a little later (an unreachable peer).
            let wait = (deadline - now).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(wait, status.changed()).await;
        }
    }

    /// One attempt at voter `id`, bounded by `within`: a controller that stopped answering (a
    /// paused process accepts connections and never replies) must not hold a heartbeat past the
    /// broker's own session.
    async fn remote(
        &self,
        id: u64,
        call: &ControllerCall,
        within: Duration,
    ) -> Result<ControllerResponse, Transport> {
        match tokio::time::timeout(within, self.remote_attempt(id, call)).await {
            Ok(r) => r,
            Err(_) => {
                self.channels.lock().await.remove(&id);
                Err(Transport::Unknown(format!(
                    "no answer within {} ms",
                    within.as_millis()
                )))
            }
        }
    }

    async fn remote_attempt(
        &self,
        id: u64,
        call: &ControllerCall,
    ) -> Result<ControllerResponse, Transport> {
        let channel = self.channel(id).await?;
        let bytes = call
            .encode()
            .map_err(|e| Transport::NotSent(format!("call does not encode: {e}")))?;
        let mut client = BrokerInternalClient::new(channel.clone());
        match client
            .controller(ControllerRequest { call: bytes.into() })
            .await
        {
            Ok(reply) => ControllerResponse::decode(&reply.into_inner().response)
                .map_err(|e| Transport::Unknown(format!("undecodable controller response: {e}"))),
            Err(status) => {
                // The channel may be broken: connect afresh next time.
                self.channels.lock().await.remove(&id);
                if status.code() == tonic::Code::Unavailable {
                    Err(Transport::NotSent(status.message().to_string()))
                } else {
                    Err(Transport::Unknown(status.to_string()))
                }
            }
        }
    }

    async fn channel(&self, id: u64) -> Result<Channel, Transport> {
        if let Some(c) = self.channels.lock().await.get(&id) {
            return Ok(c.clone());
        }
        let addr = self
            .voters
            .get(&id)
            .ok_or_else(|| Transport::NotSent(format!("voter {id} has no known address")))?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Transport::NotSent(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| Transport::NotSent(e.to_string()))?;
        self.channels.lock().await.insert(id, channel.clone());
        Ok(channel)
    }

    /// Waits until this broker's image has applied `offset` (or `timeout` passes); returns the
    /// image then.
    pub async fn wait_for_offset(&self, offset: u64, timeout: Duration) -> Arc<MetadataImage> {
        let mut rx = self.quorum.watch_image();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|i| i.offset >= offset)).await;
        let image = rx.borrow().clone();
        image
    }
}
