//! Transaction and idempotence APIs are not served yet (they are not in ApiVersions, so
//! well-behaved clients fail fast with "not supported"). A client that sends InitProducerId anyway
//! gets a decodable UNSUPPORTED_VERSION response instead of a dropped connection.

use bytes::BytesMut;
use kafka_protocol::messages::{ApiKey, InitProducerIdResponse};
use kafka_protocol::protocol::Message;
use kafka_protocol::ResponseError;

use super::{err, frame::encode_response};

/// The error response for an unserved API, or `None` when there is no sensible one (the caller
/// then closes the connection, as Kafka does for requests it cannot answer).
pub fn reply(key: ApiKey, corr: i32, version: i16) -> Result<Option<BytesMut>, String> {
    match key {
        ApiKey::InitProducerId
            if (InitProducerIdResponse::VERSIONS.min..=InitProducerIdResponse::VERSIONS.max)
                .contains(&version) =>
        {
            let resp = InitProducerIdResponse::default()
                .with_error_code(err(ResponseError::UnsupportedVersion))
                .with_producer_id((-1).into())
                .with_producer_epoch(-1);
            encode_response(corr, version, &resp).map(Some)
        }
        _ => Ok(None),
    }
}
