//! Consumer-group and transaction APIs are not served yet (they are not in ApiVersions, so
//! well-behaved clients fail fast with "not supported"). A client that sends one anyway gets a
//! decodable response carrying COORDINATOR_NOT_AVAILABLE (groups) or UNSUPPORTED_VERSION
//! (transactions) instead of a dropped connection.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, HeartbeatResponse, InitProducerIdResponse, JoinGroupResponse,
    LeaveGroupResponse, ListGroupsResponse, OffsetFetchResponse, SyncGroupResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, StrBytes};
use kafka_protocol::ResponseError;

use super::{err, frame::encode_response};

fn respond<R: Encodable + HeaderVersion + Message>(
    corr: i32,
    version: i16,
    resp: R,
) -> Result<Option<BytesMut>, String> {
    if version < R::VERSIONS.min || version > R::VERSIONS.max {
        return Ok(None);
    }
    encode_response(corr, version, &resp).map(Some)
}

/// The error response for an unserved API, or `None` when there is no sensible one (the caller
/// then closes the connection, as Kafka does for requests it cannot answer).
pub fn reply(
    key: ApiKey,
    corr: i32,
    version: i16,
    body: &mut Bytes,
) -> Result<Option<BytesMut>, String> {
    let unavailable = err(ResponseError::CoordinatorNotAvailable);
    match key {
        ApiKey::FindCoordinator => {
            let req = FindCoordinatorRequest::decode(body, version).map_err(|e| e.to_string())?;
            let msg = Some(StrBytes::from_static_str(
                "consumer groups are not served by this broker yet",
            ));
            let resp = FindCoordinatorResponse::default()
                .with_error_code(unavailable)
                .with_error_message(if version >= 1 { msg.clone() } else { None })
                .with_node_id((-1).into())
                .with_port(-1)
                .with_coordinators(if version >= 4 {
                    req.coordinator_keys
                        .into_iter()
                        .map(|k| {
                            Coordinator::default()
                                .with_key(k)
                                .with_node_id((-1).into())
                                .with_port(-1)
                                .with_error_code(unavailable)
                                .with_error_message(msg.clone())
                        })
                        .collect()
                } else {
                    Vec::new()
                });
            respond(corr, version, resp)
        }
        ApiKey::JoinGroup => respond(
            corr,
            version,
            JoinGroupResponse::default().with_error_code(unavailable),
        ),
        ApiKey::SyncGroup => respond(
            corr,
            version,
            SyncGroupResponse::default().with_error_code(unavailable),
        ),
        ApiKey::Heartbeat => respond(
            corr,
            version,
            HeartbeatResponse::default().with_error_code(unavailable),
        ),
        ApiKey::LeaveGroup => respond(
            corr,
            version,
            LeaveGroupResponse::default().with_error_code(unavailable),
        ),
        ApiKey::ListGroups => respond(
            corr,
            version,
            ListGroupsResponse::default().with_error_code(unavailable),
        ),
        ApiKey::OffsetFetch if (2..8).contains(&version) => respond(
            corr,
            version,
            OffsetFetchResponse::default().with_error_code(unavailable),
        ),
        ApiKey::InitProducerId => respond(
            corr,
            version,
            InitProducerIdResponse::default()
                .with_error_code(err(ResponseError::UnsupportedVersion))
                .with_producer_id((-1).into())
                .with_producer_epoch(-1),
        ),
        _ => Ok(None),
    }
}
