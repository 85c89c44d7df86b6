//! Producer ids for idempotent producers (InitProducerId): handed out from blocks the active
//! controller allocates to this broker (`AllocateProducerIds`, committed to the metadata log
//! before use), so no two brokers — and no broker before and after a restart — give out the same
//! id. Kafka's `RPCProducerIdManager`.

use std::sync::Arc;
use std::time::Duration;

use sluice_replication::controller::api::{ControllerAnswer, ControllerCall, ControllerFailure};

use crate::cluster::controller_client::ControllerClient;
use crate::cluster::lifecycle::Lifecycle;

/// How long InitProducerId waits for a new block.
const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ProducerIdError {
    #[error("this broker is not registered with the controller yet")]
    NotRegistered,
    #[error(transparent)]
    Controller(#[from] ControllerFailure),
    #[error("unexpected controller answer {0:?}")]
    Unexpected(ControllerAnswer),
}

pub struct ProducerIds {
    controller: Arc<ControllerClient>,
    lifecycle: Arc<Lifecycle>,
    /// The current block: the next id to give and the end (exclusive). Held across the
    /// controller call so concurrent requests wait for one new block rather than each taking
    /// one.
    block: tokio::sync::Mutex<(i64, i64)>,
}

impl ProducerIds {
    pub fn new(controller: Arc<ControllerClient>, lifecycle: Arc<Lifecycle>) -> ProducerIds {
        ProducerIds {
            controller,
            lifecycle,
            block: tokio::sync::Mutex::new((0, 0)),
        }
    }

    /// A producer id no one else has been or will be given.
    pub async fn next(&self) -> Result<i64, ProducerIdError> {
        let mut block = self.block.lock().await;
        if block.0 >= block.1 {
            let broker_epoch = self
                .lifecycle
                .state()
                .broker_epoch
                .ok_or(ProducerIdError::NotRegistered)?;
            let call = ControllerCall::AllocateProducerIds {
                broker_id: self.lifecycle.broker_id(),
                broker_epoch,
            };
            match self.controller.call(call, ALLOCATE_TIMEOUT).await?.0 {
                ControllerAnswer::ProducerIds { start, len } => *block = (start, start + len),
                other => return Err(ProducerIdError::Unexpected(other)),
            }
            tracing::debug!(start = block.0, end = block.1, "new producer id block");
        }
        let id = block.0;
        block.0 += 1;
        Ok(id)
    }
}
