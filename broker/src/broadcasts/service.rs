//! `Broadcasts.Start`, `Get` and `Cancel`.

use std::{sync::Arc, time::Duration};

use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use switchboard_proto::v1::{
    BroadcastCommand, BroadcastReport, CancelBroadcastRequest, CancelBroadcastResponse,
    GetBroadcastRequest, StartBroadcastRequest, StartBroadcastResponse, broadcast_command::Command,
    broadcasts_server::Broadcasts,
};
use tonic::{Request, Response, Status};

use super::{config::BroadcastsConfig, view::BroadcastView};
use crate::{
    auth::Auth,
    error::{FieldViolation, IngestError},
};

/// The longest broadcast id.
const MAX_ID_BYTES: usize = 128;

/// Serves the `Broadcasts` service.
#[derive(Clone)]
pub struct BroadcastsService {
    producer: FutureProducer,
    auth: Arc<Auth>,
    view: BroadcastView,
    config: Arc<BroadcastsConfig>,
    ack_timeout: Duration,
}

impl BroadcastsService {
    pub fn new(
        producer: FutureProducer,
        auth: Arc<Auth>,
        view: BroadcastView,
        config: BroadcastsConfig,
        ack_timeout: Duration,
    ) -> Self {
        Self {
            producer,
            auth,
            view,
            config: Arc::new(config),
            ack_timeout,
        }
    }

    async fn publish(&self, command: &BroadcastCommand) -> Result<(), IngestError> {
        let payload = command.encode_to_vec();
        let record = FutureRecord::to(&self.config.commands_topic)
            .key(&command.broadcast_id)
            .payload(&payload);
        self.producer
            .send(record, self.ack_timeout)
            .await
            .map(|_| ())
            .map_err(|(e, _)| IngestError::from_kafka(e))
    }
}

fn check_id(field: &str, id: &str, violations: &mut Vec<FieldViolation>) {
    if id.len() > MAX_ID_BYTES || id.contains('/') {
        violations.push(FieldViolation::new(
            field,
            "must be at most 128 bytes, without `/`",
        ));
    }
}

#[tonic::async_trait]
impl Broadcasts for BroadcastsService {
    async fn start(
        &self,
        request: Request<StartBroadcastRequest>,
    ) -> Result<Response<StartBroadcastResponse>, Status> {
        let caller = self.auth.authenticate(request.metadata())?;
        let mut spec = request.into_inner().broadcast.unwrap_or_default();
        let mut violations = Vec::new();
        if spec.tenant_id.is_empty() {
            violations.push(FieldViolation::new("broadcast.tenant_id", "is required"));
        }
        check_id(
            "broadcast.broadcast_id",
            &spec.broadcast_id,
            &mut violations,
        );
        if spec.template.as_ref().is_none_or(|t| t.name.is_empty()) {
            violations.push(FieldViolation::new(
                "broadcast.template.name",
                "is required: broadcasts send approved templates",
            ));
        }
        if spec.topic.is_empty() && spec.recipients.is_empty() {
            violations.push(FieldViolation::new(
                "broadcast.topic",
                "a topic or recipients are required",
            ));
        }
        if spec.recipients.len() > self.config.max_listed_recipients {
            violations.push(FieldViolation::new(
                "broadcast.recipients",
                format!("at most {} per request", self.config.max_listed_recipients),
            ));
        }
        if !violations.is_empty() {
            return Err(IngestError::InvalidArgument(violations).into());
        }
        caller.admit("broadcast.tenant_id", &spec.tenant_id, 1)?;
        if spec.broadcast_id.is_empty() {
            spec.broadcast_id = uuid::Uuid::now_v7().to_string();
        }
        spec.created_at = Some(switchboard_proto::timestamp(std::time::SystemTime::now()));
        let command = BroadcastCommand {
            broadcast_id: spec.broadcast_id.clone(),
            tenant_id: spec.tenant_id.clone(),
            command: Some(Command::Start(spec)),
        };
        self.publish(&command).await?;
        Ok(Response::new(StartBroadcastResponse {
            broadcast_id: command.broadcast_id,
        }))
    }

    async fn get(
        &self,
        request: Request<GetBroadcastRequest>,
    ) -> Result<Response<BroadcastReport>, Status> {
        let caller = self.auth.authenticate(request.metadata())?;
        let request = request.into_inner();
        caller.admit("tenant_id", &request.tenant_id, 0)?;
        self.view
            .report(&request.tenant_id, &request.broadcast_id)
            .map(Response::new)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no broadcast {:?} of tenant {:?} (yet: progress appears once a worker started it)",
                    request.broadcast_id, request.tenant_id
                ))
            })
    }

    async fn cancel(
        &self,
        request: Request<CancelBroadcastRequest>,
    ) -> Result<Response<CancelBroadcastResponse>, Status> {
        let caller = self.auth.authenticate(request.metadata())?;
        let request = request.into_inner();
        let mut violations = Vec::new();
        if request.broadcast_id.is_empty() {
            violations.push(FieldViolation::new("broadcast_id", "is required"));
        }
        check_id("broadcast_id", &request.broadcast_id, &mut violations);
        if !violations.is_empty() {
            return Err(IngestError::InvalidArgument(violations).into());
        }
        caller.admit("tenant_id", &request.tenant_id, 1)?;
        let command = BroadcastCommand {
            broadcast_id: request.broadcast_id,
            tenant_id: request.tenant_id,
            command: Some(Command::Cancel(request.reason)),
        };
        self.publish(&command).await?;
        Ok(Response::new(CancelBroadcastResponse {}))
    }
}
