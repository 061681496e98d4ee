//! The `switchboard.v1.Ingest` gRPC service.

use std::{pin::Pin, sync::Arc, time::SystemTime};

use futures::{Stream, StreamExt, stream::FuturesUnordered};
use switchboard_proto::v1::{
    Channel, Envelope, PublishRequest, PublishResponse, WebhookRequest, WebhookResponse,
    ingest_server::Ingest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    error::IngestError,
    publisher::{Ack, PendingAck, Publisher},
    validate,
};

/// Serves `Publish`, `PublishStream` and `IngestWebhook`.
#[derive(Clone)]
pub struct IngestService {
    publisher: Arc<Publisher>,
    max_in_flight_per_stream: usize,
}

impl IngestService {
    /// A service publishing through `publisher`.
    pub fn new(publisher: Arc<Publisher>, max_in_flight_per_stream: usize) -> Self {
        Self {
            publisher,
            max_in_flight_per_stream,
        }
    }

    /// Validates and enqueues one envelope, taking a permit from `permit`.
    fn enqueue(
        &self,
        path: &str,
        envelope: Option<Envelope>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(String, PendingAck), IngestError> {
        let envelope = envelope.ok_or_else(|| IngestError::invalid(path, "is required"))?;
        let envelope = validate::normalize(path, envelope, SystemTime::now())?;
        let pending = self.publisher.enqueue(&envelope, permit)?;
        Ok((envelope.message_id, pending))
    }
}

fn response(message_id: String, ack: Ack, sequence: u64) -> PublishResponse {
    PublishResponse {
        message_id,
        partition: ack.partition,
        offset: ack.offset,
        duplicate: false,
        sequence,
        error: None,
    }
}

fn count(rpc: &'static str, code: tonic::Code, n: u64) {
    metrics::counter!("switchboard_ingest_requests_total", "rpc" => rpc, "code" => code_label(code)).increment(n);
}

fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "ok",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Unimplemented => "unimplemented",
        _ => "other",
    }
}

fn record<T>(rpc: &'static str, result: &Result<T, IngestError>) {
    count(
        rpc,
        result
            .as_ref()
            .map_or_else(IngestError::code, |_| tonic::Code::Ok),
        1,
    );
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<PublishResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let request = request.into_inner();
        let result = async {
            let permit = self.publisher.try_permit()?;
            let (message_id, pending) = self.enqueue("envelope", request.envelope, permit)?;
            Ok(response(
                message_id,
                pending.wait().await?,
                request.sequence,
            ))
        }
        .await;
        record("publish", &result);
        Ok(Response::new(result?))
    }

    type PublishStreamStream = ResponseStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let limit = self.max_in_flight_per_stream;
        let (tx, rx) = mpsc::channel(limit);
        let service = self.clone();
        tokio::spawn(async move {
            let mut pending = FuturesUnordered::new();
            // A global in-flight permit is taken before a request is read, so
            // a saturated node stops reading and HTTP/2 flow control pushes
            // back on the client; the per-stream bound does the same.
            let mut permit = None;
            let mut open = true;
            while open || !pending.is_empty() {
                tokio::select! {
                    Some(done) = pending.next(), if !pending.is_empty() => {
                        if tx.send(Ok(done)).await.is_err() {
                            return; // the client went away
                        }
                    }
                    p = service.publisher.permit(), if open && permit.is_none() && pending.len() < limit => {
                        match p {
                            Ok(p) => permit = Some(p),
                            Err(_) => open = false,
                        }
                    }
                    next = inbound.message(), if open && permit.is_some() => match next {
                        Ok(Some(req)) => {
                            let sequence = req.sequence;
                            let permit = permit.take().expect("guarded by the select condition");
                            let queued = service.enqueue("envelope", req.envelope, permit);
                            pending.push(async move {
                                let result = match queued {
                                    Ok((id, ack)) => ack.wait().await.map(|ack| response(id, ack, sequence)),
                                    Err(e) => Err(e),
                                };
                                record("publish_stream", &result);
                                result.unwrap_or_else(|e| PublishResponse {
                                    sequence,
                                    error: Some(e.to_detail()),
                                    ..Default::default()
                                })
                            });
                        }
                        Ok(None) => open = false,
                        Err(status) => {
                            tracing::debug!(%status, "publish stream ended by the client");
                            open = false;
                        }
                    },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ingest_webhook(
        &self,
        request: Request<WebhookRequest>,
    ) -> Result<Response<WebhookResponse>, Status> {
        let request = request.into_inner();
        let result = async {
            let mut envelope = parse_webhook(&request)?;
            envelope.tenant_id.clone_from(&request.tenant_id);
            envelope.channel = request.channel;
            let permit = self.publisher.try_permit()?;
            let (message_id, pending) = self.enqueue("payload", Some(envelope), permit)?;
            Ok(WebhookResponse {
                results: vec![response(message_id, pending.wait().await?, 0)],
            })
        }
        .await;
        record("ingest_webhook", &result);
        Ok(Response::new(result?))
    }
}

/// Turns a webhook body into an envelope. Web chat posts the canonical
/// envelope itself, as proto3 JSON or binary protobuf.
fn parse_webhook(request: &WebhookRequest) -> Result<Envelope, IngestError> {
    if request.tenant_id.is_empty() {
        return Err(IngestError::invalid("tenant_id", "is required"));
    }
    match Channel::try_from(request.channel).unwrap_or(Channel::Unspecified) {
        Channel::Webchat => {}
        Channel::Unspecified => return Err(IngestError::invalid("channel", "is required")),
        other => {
            return Err(IngestError::invalid(
                "channel",
                format!(
                    "no webhook normalizer for {} yet; publish canonical envelopes with Publish",
                    other.as_str_name()
                ),
            ));
        }
    }
    let content_type = request.content_type.split(';').next().unwrap_or("").trim();
    match content_type {
        "" | "application/json" => serde_json::from_slice(&request.payload)
            .map_err(|e| IngestError::invalid("payload", format!("is not a JSON envelope: {e}"))),
        "application/x-protobuf" | "application/protobuf" => {
            prost::Message::decode(request.payload.clone()).map_err(|e| {
                IngestError::invalid("payload", format!("is not a protobuf envelope: {e}"))
            })
        }
        other => Err(IngestError::invalid(
            "content_type",
            format!("{other:?} is not supported: use application/json or application/x-protobuf"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webchat(payload: &str, content_type: &str) -> WebhookRequest {
        WebhookRequest {
            tenant_id: "acme".into(),
            channel: Channel::Webchat as i32,
            payload: payload.as_bytes().to_vec().into(),
            content_type: content_type.into(),
        }
    }

    #[test]
    fn webchat_json_envelope_parses() {
        let env = parse_webhook(&webchat(
            r#"{"conversationId":"c-9","direction":"INBOUND","text":{"body":"hello"},"attributes":{"language":"en"}}"#,
            "application/json; charset=utf-8",
        ))
        .unwrap();
        assert_eq!(env.conversation_id, "c-9");
        assert_eq!(
            env.direction,
            switchboard_proto::v1::Direction::Inbound as i32
        );
        assert_eq!(env.attributes["language"], "en");
        assert!(
            matches!(env.content, Some(switchboard_proto::v1::envelope::Content::Text(ref t)) if t.body == "hello")
        );
    }

    #[test]
    fn webhook_errors_name_the_field() {
        let field = |r: WebhookRequest| match parse_webhook(&r).unwrap_err() {
            IngestError::InvalidArgument(v) => v[0].field.clone(),
            e => panic!("{e:?}"),
        };
        assert_eq!(field(webchat("{not json", "application/json")), "payload");
        assert_eq!(field(webchat("{}", "text/plain")), "content_type");
        assert_eq!(
            field(WebhookRequest {
                tenant_id: String::new(),
                ..webchat("{}", "")
            }),
            "tenant_id"
        );
        assert_eq!(
            field(WebhookRequest {
                channel: Channel::Sms as i32,
                ..webchat("{}", "")
            }),
            "channel"
        );
    }
}
