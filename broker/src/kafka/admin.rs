//! Topic administration over the Kafka protocol: CreateTopics, DeleteTopics, CreatePartitions,
//! DescribeConfigs, AlterConfigs, IncrementalAlterConfigs: codecs around
//! [`crate::requests::admin`], which the gRPC Admin service calls too.

use std::collections::BTreeMap;

use bytes::BytesMut;
use kafka_protocol::messages::alter_configs_request::AlterConfigsRequest;
use kafka_protocol::messages::alter_configs_response::{
    AlterConfigsResourceResponse, AlterConfigsResponse,
};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsRequest;
use kafka_protocol::messages::create_partitions_response::{
    CreatePartitionsResponse, CreatePartitionsTopicResult,
};
use kafka_protocol::messages::create_topics_request::CreateTopicsRequest;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult, CreateTopicsResponse,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicsRequest;
use kafka_protocol::messages::delete_topics_response::{
    DeletableTopicResult, DeleteTopicsResponse,
};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsRequest;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResponse, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_request::IncrementalAlterConfigsRequest;
use kafka_protocol::messages::incremental_alter_configs_response::{
    AlterConfigsResourceResponse as IncrementalResult, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use super::metadata::{topic_error_code, topic_name};
use super::{err, frame::encode_response, Ctx};
use sluice_replication::controller::api::ControllerFailure;
use sluice_replication::controller::ControllerError;

use crate::config::LIST_CONFIGS;
use crate::requests::admin::DYNAMIC_BROKER_CONFIGS;
use crate::topics::TopicError;
use sluice_replication::metadata::ConfigResource;

// IncrementalAlterConfigs operations.
const SET: i8 = 0;
const DELETE: i8 = 1;
const APPEND: i8 = 2;
const SUBTRACT: i8 = 3;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
// Kafka's ConfigSource values.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

pub async fn create_topics(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: CreateTopicsRequest,
) -> Result<BytesMut, String> {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.to_string();
        let configs: BTreeMap<String, String> = t
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        let mut r = CreatableTopicResult::default().with_name(t.name.clone());
        let partitions = if t.num_partitions == -1 {
            0
        } else {
            t.num_partitions
        };
        let rf = if t.replication_factor == -1 {
            0
        } else {
            t.replication_factor
        };
        let outcome = if partitions < 0 && t.assignments.is_empty() {
            Err(TopicError::InvalidPartitions(0))
        } else if rf < 0 {
            Err(TopicError::InvalidReplicationFactor {
                requested: 0,
                available: 0,
            })
        } else if !t.assignments.is_empty() {
            // Manual replica assignment is not supported: placement is the controller's.
            Err(TopicError::Controller(ControllerFailure::Refused(
                ControllerError::InvalidRequest(
                    "manual replica assignments are not supported; give a partition count and a replication factor".into(),
                ),
            )))
        } else {
            ctx.admin
                .create_topic(
                    &name,
                    partitions as u32,
                    rf as u32,
                    configs.clone(),
                    req.validate_only,
                )
                .await
        };
        match outcome {
            Ok(created) => {
                r = r
                    .with_topic_id(created.topic_id)
                    .with_num_partitions(created.partitions as i32)
                    .with_replication_factor(created.replication_factor as i16);
                if version >= 5 {
                    if let Ok(settings) = ctx.config.topic_settings(&configs) {
                        r = r.with_configs(Some(
                            settings
                                .describe()
                                .into_iter()
                                .map(|(k, v)| {
                                    let src = config_source(ctx, &configs, &k);
                                    CreatableTopicConfigs::default()
                                        .with_name(s(k))
                                        .with_value(Some(s(v)))
                                        .with_config_source(src)
                                })
                                .collect(),
                        ));
                    }
                }
            }
            Err(e) => {
                r = r
                    .with_error_code(topic_error_code(&e))
                    .with_error_message(Some(s(e.to_string())));
            }
        }
        results.push(r);
    }
    encode_response(
        corr,
        version,
        &CreateTopicsResponse::default().with_topics(results),
    )
}

pub async fn delete_topics(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: DeleteTopicsRequest,
) -> Result<BytesMut, String> {
    let mut names: Vec<String> = req.topic_names.iter().map(|n| n.0.to_string()).collect();
    names.extend(
        req.topics
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())),
    );
    let mut results = Vec::with_capacity(names.len());
    for name in names {
        let mut r = DeletableTopicResult::default().with_name(Some(topic_name(&name)));
        if let Err(e) = ctx.admin.delete_topic(&name).await {
            r = r.with_error_code(topic_error_code(&e));
            if version >= 5 {
                r = r.with_error_message(Some(s(e.to_string())));
            }
        }
        results.push(r);
    }
    encode_response(
        corr,
        version,
        &DeleteTopicsResponse::default().with_responses(results),
    )
}

pub async fn create_partitions(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: CreatePartitionsRequest,
) -> Result<BytesMut, String> {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.to_string();
        let outcome = match u32::try_from(t.count) {
            Ok(count) => {
                ctx.admin
                    .create_partitions(&name, count, req.validate_only)
                    .await
            }
            Err(_) => Err(TopicError::InvalidPartitions(0)),
        };
        let mut r = CreatePartitionsTopicResult::default().with_name(t.name);
        if let Err(e) = outcome {
            r = r
                .with_error_code(topic_error_code(&e))
                .with_error_message(Some(s(e.to_string())));
        }
        results.push(r);
    }
    encode_response(
        corr,
        version,
        &CreatePartitionsResponse::default().with_results(results),
    )
}

fn config_source(ctx: &Ctx, overrides: &BTreeMap<String, String>, key: &str) -> i8 {
    if overrides.contains_key(key) {
        SOURCE_TOPIC
    } else if ctx.config.topic_defaults.contains_key(key) {
        SOURCE_STATIC_BROKER
    } else {
        SOURCE_DEFAULT
    }
}

fn broker_configs(ctx: &Ctx) -> BTreeMap<String, String> {
    let c = &ctx.config;
    let mut m = BTreeMap::new();
    m.insert("broker.id".into(), c.node_id.to_string());
    m.insert("num.partitions".into(), c.num_partitions.to_string());
    m.insert(
        "default.replication.factor".into(),
        c.default_replication_factor.to_string(),
    );
    m.insert(
        "auto.create.topics.enable".into(),
        c.auto_create_topics_enable.to_string(),
    );
    m.insert(
        "socket.request.max.bytes".into(),
        c.max_request_bytes.to_string(),
    );
    m.insert("max.connections".into(), c.max_connections.to_string());
    m
}

pub fn describe_configs(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: DescribeConfigsRequest,
) -> Result<BytesMut, String> {
    let results = req
        .resources
        .into_iter()
        .map(|res| {
            let r = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let wanted = |k: &str| {
                res.configuration_keys
                    .as_ref()
                    .is_none_or(|keys| keys.iter().any(|w| &**w == k))
            };
            let entries: Vec<(String, String, i8)> = match res.resource_type {
                RESOURCE_TOPIC => match ctx.topics.get(&res.resource_name) {
                    Ok(topic) => {
                        let overrides = topic.overrides();
                        topic
                            .settings()
                            .describe()
                            .into_iter()
                            .map(|(k, v)| {
                                let src = config_source(ctx, &overrides, &k);
                                (k, v, src)
                            })
                            .collect()
                    }
                    Err(e) => {
                        return r
                            .with_error_code(topic_error_code(&e))
                            .with_error_message(Some(s(e.to_string())));
                    }
                },
                RESOURCE_BROKER => {
                    let mut entries: Vec<(String, String, i8)> = broker_configs(ctx)
                        .into_iter()
                        .map(|(k, v)| (k, v, SOURCE_STATIC_BROKER))
                        .collect();
                    entries.extend(dynamic_broker_configs(ctx, &res.resource_name));
                    entries
                }
                other => {
                    return r
                        .with_error_code(err(ResponseError::InvalidRequest))
                        .with_error_message(Some(s(format!(
                            "resource type {other} is not supported"
                        ))));
                }
            };
            r.with_configs(
                entries
                    .into_iter()
                    .filter(|(k, _, _)| wanted(k))
                    .map(|(k, v, src)| {
                        let read_only = res.resource_type == RESOURCE_BROKER
                            && !DYNAMIC_BROKER_CONFIGS.contains(&k.as_str());
                        DescribeConfigsResourceResult::default()
                            .with_name(s(k))
                            .with_value(Some(s(v)))
                            .with_config_source(src)
                            .with_read_only(read_only)
                    })
                    .collect(),
            )
        })
        .collect();
    encode_response(
        corr,
        version,
        &DescribeConfigsResponse::default().with_results(results),
    )
}

/// The dynamic broker configs in force for the broker resource `name` ("" = the cluster
/// default), with Kafka's config source: this broker's, the cluster default, or the static one.
fn dynamic_broker_configs(ctx: &Ctx, name: &str) -> Vec<(String, String, i8)> {
    const SOURCE_DYNAMIC_BROKER: i8 = 2;
    const SOURCE_DYNAMIC_DEFAULT_BROKER: i8 = 3;
    let image = ctx.quorum.image();
    let get = |b: Option<i32>, k: &str| {
        image
            .configs
            .get(&ConfigResource::Broker(b))
            .and_then(|c| c.get(k).cloned())
    };
    let id = name.parse::<i32>().ok();
    DYNAMIC_BROKER_CONFIGS
        .iter()
        .map(|k| {
            let (v, src) = match (id.and_then(|i| get(Some(i), k)), get(None, k)) {
                (Some(v), _) => (v, SOURCE_DYNAMIC_BROKER),
                (None, Some(v)) => (v, SOURCE_DYNAMIC_DEFAULT_BROKER),
                (None, None) => (
                    ctx.config.leader_replication_throttled_rate.to_string(),
                    SOURCE_STATIC_BROKER,
                ),
            };
            (k.to_string(), v, src)
        })
        .collect()
}

/// Changes dynamic broker configs (resource name "" = every broker, or one broker's id).
async fn alter_broker_resource(
    ctx: &Ctx,
    name: &str,
    changes: BTreeMap<String, Option<String>>,
    validate_only: bool,
) -> (i16, Option<String>) {
    let broker = if name.is_empty() {
        None
    } else {
        match name.parse::<i32>() {
            Ok(id) => Some(id),
            Err(_) => {
                return (
                    err(ResponseError::InvalidRequest),
                    Some(format!("{name:?} is not a broker id")),
                )
            }
        }
    };
    if validate_only {
        return match crate::requests::admin::validate_broker_configs(&changes) {
            Ok(()) => (0, None),
            Err(e) => (topic_error_code(&e), Some(e.to_string())),
        };
    }
    match ctx.admin.alter_broker_configs(broker, changes).await {
        Ok(()) => (0, None),
        Err(e) => (topic_error_code(&e), Some(e.to_string())),
    }
}

/// Applies new topic overrides (or only validates them). Returns Kafka's error code and message.
async fn apply_overrides(
    ctx: &Ctx,
    resource_type: i8,
    name: &str,
    overrides: Option<BTreeMap<String, String>>,
    validate_only: bool,
) -> Result<(i16, Option<String>), String> {
    if resource_type == RESOURCE_BROKER {
        // The whole set of the resource's dynamic configs: those not given are removed.
        let given = overrides.unwrap_or_default();
        let changes = DYNAMIC_BROKER_CONFIGS
            .iter()
            .map(|k| (k.to_string(), None))
            .chain(given.into_iter().map(|(k, v)| (k, Some(v))))
            .collect();
        return Ok(alter_broker_resource(ctx, name, changes, validate_only).await);
    }
    if resource_type != RESOURCE_TOPIC {
        return Ok((
            err(ResponseError::InvalidRequest),
            Some(format!("resource type {resource_type} cannot be altered")),
        ));
    }
    let Some(overrides) = overrides else {
        return Ok((
            err(ResponseError::InvalidConfig),
            Some("unsupported config operation".into()),
        ));
    };
    match ctx
        .admin
        .set_topic_overrides(name, overrides, validate_only)
        .await
    {
        Ok(()) => Ok((0, None)),
        Err(e) => Ok((topic_error_code(&e), Some(e.to_string()))),
    }
}

pub async fn alter_configs(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: AlterConfigsRequest,
) -> Result<BytesMut, String> {
    let mut responses = Vec::new();
    for res in req.resources {
        // AlterConfigs replaces the whole set of overrides.
        let overrides: BTreeMap<String, String> = res
            .configs
            .iter()
            .filter_map(|c| {
                c.value
                    .as_ref()
                    .map(|v| (c.name.to_string(), v.to_string()))
            })
            .collect();
        let (code, msg) = apply_overrides(
            ctx,
            res.resource_type,
            &res.resource_name,
            Some(overrides),
            req.validate_only,
        )
        .await?;
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(msg.map(s))
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name),
        );
    }
    encode_response(
        corr,
        version,
        &AlterConfigsResponse::default().with_responses(responses),
    )
}

/// A topic's overrides after IncrementalAlterConfigs' operations: SET, DELETE, and for list
/// configs ([`LIST_CONFIGS`]) APPEND (items not already there, in order) and SUBTRACT, applied to
/// the current value (the override, else the effective default) as Kafka does. An unknown topic
/// gives empty overrides (validation reports it); APPEND/SUBTRACT on another config is refused.
fn incremental_overrides(
    ctx: &Ctx,
    topic: &str,
    ops: &[kafka_protocol::messages::incremental_alter_configs_request::AlterableConfig],
) -> Result<BTreeMap<String, String>, String> {
    let Ok(t) = ctx.topics.get(topic) else {
        return Ok(BTreeMap::new());
    };
    let mut o = t.overrides();
    let effective = t.settings().describe();
    let items = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(str::to_string)
            .collect()
    };
    for c in ops {
        let name = c.name.to_string();
        match (c.config_operation, &c.value) {
            (SET, Some(v)) => {
                o.insert(name, v.to_string());
            }
            (DELETE, _) => {
                o.remove(&name);
            }
            (op @ (APPEND | SUBTRACT), Some(v)) => {
                if !LIST_CONFIGS.contains(&name.as_str()) {
                    return Err(format!(
                        "{} is only for list configs ({}), not {name}",
                        if op == APPEND { "APPEND" } else { "SUBTRACT" },
                        LIST_CONFIGS.join(", ")
                    ));
                }
                let current = o
                    .get(&name)
                    .or_else(|| effective.get(&name))
                    .map_or_else(Vec::new, |v| items(v));
                let change = items(v);
                let next: Vec<String> = if op == APPEND {
                    let mut n = current;
                    for i in change {
                        if !n.contains(&i) {
                            n.push(i);
                        }
                    }
                    n
                } else {
                    current
                        .into_iter()
                        .filter(|i| !change.contains(i))
                        .collect()
                };
                o.insert(name, next.join(","));
            }
            (op, _) => return Err(format!("operation {op} on {name} needs a value")),
        }
    }
    Ok(o)
}

pub async fn incremental_alter_configs(
    ctx: &Ctx,
    corr: i32,
    version: i16,
    req: IncrementalAlterConfigsRequest,
) -> Result<BytesMut, String> {
    let mut responses = Vec::new();
    for res in req.resources {
        let (code, msg) = if res.resource_type == RESOURCE_BROKER {
            let mut changes = BTreeMap::new();
            let mut bad = None;
            for c in &res.configs {
                match (c.config_operation, &c.value) {
                    (SET, Some(v)) => {
                        changes.insert(c.name.to_string(), Some(v.to_string()));
                    }
                    (DELETE, _) => {
                        changes.insert(c.name.to_string(), None);
                    }
                    _ => bad = Some(c.name.to_string()),
                }
            }
            match bad {
                Some(k) => (
                    err(ResponseError::InvalidConfig),
                    Some(format!("unsupported operation on {k}")),
                ),
                None => {
                    alter_broker_resource(ctx, &res.resource_name, changes, req.validate_only).await
                }
            }
        } else {
            match incremental_overrides(ctx, &res.resource_name, &res.configs) {
                Err(message) => (err(ResponseError::InvalidRequest), Some(message)),
                Ok(overrides) => {
                    apply_overrides(
                        ctx,
                        res.resource_type,
                        &res.resource_name,
                        Some(overrides),
                        req.validate_only,
                    )
                    .await?
                }
            }
        };
        responses.push(
            IncrementalResult::default()
                .with_error_code(code)
                .with_error_message(msg.map(s))
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name),
        );
    }
    encode_response(
        corr,
        version,
        &IncrementalAlterConfigsResponse::default().with_responses(responses),
    )
}
