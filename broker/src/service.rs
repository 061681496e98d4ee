//! The `switchboard.v1.Ingest` gRPC service.
//!
//! Every envelope, whichever RPC brings it, takes the same path:
//! authenticate the caller (once per call), validate and normalize, check
//! the caller may publish for the envelope's tenant and take it from the
//! tenant's rate limit, then publish through the node's dedupe cache, so a
//! retried channel message is answered with `duplicate = true` and the
//! original message id instead of being published again.
//!
//! **`PublishBatch`** takes up to `max_batch_messages` envelopes and answers
//! each on its own, in request order, as Kinesis `PutRecords` does, with one
//! exception: once an envelope of a conversation fails, the later envelopes
//! of that conversation in the batch are not published (`ABORTED`, naming
//! the earlier one), so a conversation never gets a gap or a reordering.
//! Each envelope takes its own in-flight permit; once the node has none left
//! mid-batch, the rest of the batch gets `RESOURCE_EXHAUSTED` (or `ABORTED`
//! after a failure of its conversation) without waiting, as a unary call
//! would. Every admitted envelope is handed to Kafka, in request order,
//! before any ack is awaited.
//!
//! **Channel webhooks** take one path, [`IngestService::publish_webhook`],
//! whether they come through `IngestWebhook` or the HTTP webhook listener
//! (`crate::http`): normalized by the channel's normalizer, admitted whole
//! (the tenant's rate limit, one in-flight permit per event), published
//! through the dedupe cache, answered once Kafka acknowledged every event.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::{Stream, StreamExt, stream::FuturesUnordered};
use prost::Message as _;
use switchboard_proto::v1::{
    Channel, Envelope, PublishBatchRequest, PublishBatchResponse, PublishRequest, PublishResponse,
    WebhookRequest, WebhookResponse, ingest_server::Ingest,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use switchboard_runtime::trace::{self, TRACEPARENT, TraceParent};

use crate::{
    auth::{Auth, Caller},
    channels::{self, Limits},
    dedupe::{Dedupe, Published, SharedPublish},
    error::{IngestError, limits},
    publisher::Publisher,
    validate,
};

/// The service's own settings (a section of the node's config).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Size limits of webhook bodies.
    pub webhook_limits: Limits,
    /// Most publishes in flight on one `PublishStream` call.
    pub max_in_flight_per_stream: usize,
    /// How far ahead of the node's clock a `sent_at` may be.
    pub max_clock_skew: Duration,
    /// The largest request the server decodes (named in refusals).
    pub max_request_bytes: usize,
    /// Most envelopes in one `PublishBatch`.
    pub max_batch_messages: usize,
    /// Largest encoded `PublishBatch` request.
    pub max_batch_bytes: usize,
    /// Largest encoded envelope.
    pub max_envelope_bytes: usize,
}

/// One channel webhook as the channel sent it, for a tenant.
#[derive(Debug, Clone, Copy)]
pub struct Webhook<'a> {
    /// The tenant it is for.
    pub tenant_id: &'a str,
    /// The channel that sent it.
    pub channel: Channel,
    /// The body, exactly as received.
    pub payload: &'a [u8],
    /// Its `Content-Type` (empty: the channel's usual one).
    pub content_type: &'a str,
}

/// Where a webhook came in, for the `rpc` label of
/// `switchboard_ingest_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookRoute {
    /// The `IngestWebhook` RPC.
    Grpc,
    /// The HTTP webhook listener.
    Http,
}

/// Serves `Publish`, `PublishStream`, `IngestWebhook` and `PublishBatch`.
#[derive(Clone)]
pub struct IngestService {
    publisher: Arc<Publisher>,
    auth: Arc<Auth>,
    dedupe: Arc<Dedupe>,
    config: Arc<ServiceConfig>,
    requests: Arc<RequestCounters>,
}

/// A publish handed to Kafka (or recognised as a copy), not yet acknowledged.
struct Pending {
    outcome: SharedPublish,
    duplicate: bool,
}

impl Pending {
    async fn response(self, sequence: u64) -> Result<PublishResponse, IngestError> {
        let Published { message_id, ack } = self.outcome.await?;
        Ok(PublishResponse {
            message_id,
            partition: ack.partition,
            offset: ack.offset,
            duplicate: self.duplicate,
            sequence,
            error: None,
        })
    }
}

impl IngestService {
    /// A service publishing through `publisher`.
    pub fn new(
        publisher: Arc<Publisher>,
        auth: Arc<Auth>,
        dedupe: Arc<Dedupe>,
        config: ServiceConfig,
    ) -> Self {
        Self {
            publisher,
            auth,
            dedupe,
            config: Arc::new(config),
            requests: Arc::new(RequestCounters::new()),
        }
    }

    /// Hands a validated, admitted envelope to Kafka through the dedupe
    /// cache. Synchronous, so envelopes enter Kafka in call order.
    fn enqueue(
        &self,
        envelope: Envelope,
        trace: TraceParent,
        permit: OwnedSemaphorePermit,
    ) -> Result<Pending, IngestError> {
        let (outcome, duplicate) = self.dedupe.publish_once(
            &envelope.tenant_id,
            envelope.channel,
            &envelope.channel_message_id,
            || {
                let message_id = envelope.message_id.clone();
                let ack = self.publisher.enqueue(&envelope, trace, permit)?;
                Ok(async move { ack.wait().await.map(|ack| Published { message_id, ack }) })
            },
        )?;
        Ok(Pending { outcome, duplicate })
    }

    /// Admits and enqueues one `PublishRequest` envelope.
    fn enqueue_request(
        &self,
        caller: &Caller,
        envelope: Option<Envelope>,
        trace: TraceParent,
        permit: OwnedSemaphorePermit,
    ) -> Result<Pending, IngestError> {
        let envelope = envelope.ok_or_else(|| IngestError::invalid("envelope", "is required"))?;
        let envelope = validate::normalize(
            "envelope",
            envelope,
            SystemTime::now(),
            self.config.max_clock_skew,
        )?;
        caller.admit("envelope.tenant_id", &envelope.tenant_id, 1)?;
        self.enqueue(envelope, trace, permit)
    }

    /// Refuses a batch over `max_batch_messages` or `max_batch_bytes`.
    fn check_batch(&self, request: &PublishBatchRequest) -> Result<(), IngestError> {
        let (count, max) = (request.envelopes.len(), self.config.max_batch_messages);
        if count > max {
            return Err(IngestError::invalid(
                "envelopes",
                format!(
                    "holds {count} envelopes, over the {max} envelope limit (max_batch_messages)"
                ),
            ));
        }
        let (bytes, max) = (request.encoded_len(), self.config.max_batch_bytes);
        if bytes > max {
            return Err(IngestError::invalid(
                "envelopes",
                format!("encodes to {bytes} bytes, over the {max} byte limit (max_batch_bytes)"),
            ));
        }
        Ok(())
    }

    /// Admits and enqueues envelope `index` of a batch: an in-flight permit
    /// (none once `out_of_permits` is set), validation, the tenant's rate
    /// limit, then Kafka through the dedupe cache.
    fn enqueue_batched(
        &self,
        caller: &Caller,
        index: usize,
        envelope: Envelope,
        trace: TraceParent,
        out_of_permits: &mut bool,
    ) -> Result<Pending, IngestError> {
        let permit = if *out_of_permits {
            Err(IngestError::Overloaded("too many publishes in flight"))
        } else {
            self.publisher.try_permit()
        }
        .inspect_err(|_| *out_of_permits = true)?;
        // Paths are formatted only into errors.
        let envelope = validate::normalize(
            format_args!("envelopes[{index}]"),
            envelope,
            SystemTime::now(),
            self.config.max_clock_skew,
        )?;
        let (bytes, max) = (envelope.encoded_len(), self.config.max_envelope_bytes);
        if bytes > max {
            return Err(IngestError::invalid(
                format!("envelopes[{index}]"),
                format!("encodes to {bytes} bytes, over the {max} byte limit (max_envelope_bytes)"),
            ));
        }
        caller.admit(
            format_args!("envelopes[{index}].tenant_id"),
            &envelope.tenant_id,
            1,
        )?;
        self.enqueue(envelope, trace, permit)
    }

    /// Publishes a checked batch: every envelope is admitted and handed to
    /// Kafka in request order, then every ack is awaited. One result per
    /// envelope, in order.
    async fn publish_envelopes(
        &self,
        caller: &Caller,
        envelopes: Vec<Envelope>,
        trace: &TraceParent,
    ) -> PublishBatchResponse {
        let mut gate = ConversationGate::default();
        let mut out_of_permits = false;
        let queued: Vec<_> = envelopes
            .into_iter()
            .enumerate()
            .map(|(i, envelope)| {
                let channel = envelope.channel();
                let key = envelope.conversation_key();
                let queued = gate.check(&key).and_then(|()| {
                    self.enqueue_batched(caller, i, envelope, trace.child(), &mut out_of_permits)
                });
                if queued.is_err() {
                    gate.failed(key, i);
                }
                (channel, queued)
            })
            .collect();
        let mut response = PublishBatchResponse {
            results: Vec::with_capacity(queued.len()),
            failed_count: 0,
        };
        // Everything is with Kafka already: these waits overlap.
        for (i, (channel, queued)) in queued.into_iter().enumerate() {
            let sequence = i as u64;
            let result = match queued {
                Ok(pending) => pending.response(sequence).await,
                Err(e) => Err(e),
            };
            self.requests.record(Rpc::PublishBatch, channel, &result);
            response.results.push(result.unwrap_or_else(|e| {
                response.failed_count += 1;
                PublishResponse {
                    sequence,
                    error: Some(e.to_detail()),
                    ..Default::default()
                }
            }));
        }
        response
    }

    /// Publishes one channel webhook for `caller`: normalizes it, admits
    /// it whole (the tenant's rate limit, then an in-flight permit per
    /// event: all or nothing at the edge), hands every event to Kafka
    /// through the dedupe cache, and answers once Kafka acknowledged them
    /// all. Counted in `switchboard_ingest_requests_total` under `route`.
    pub async fn publish_webhook(
        &self,
        route: WebhookRoute,
        caller: &Caller,
        webhook: Webhook<'_>,
        trace: &TraceParent,
    ) -> Result<WebhookResponse, IngestError> {
        let result = self.publish_webhook_inner(caller, webhook, trace).await;
        let rpc = match route {
            WebhookRoute::Grpc => Rpc::IngestWebhook,
            WebhookRoute::Http => Rpc::HttpWebhook,
        };
        self.requests.record(rpc, webhook.channel, &result);
        result
    }

    async fn publish_webhook_inner(
        &self,
        caller: &Caller,
        webhook: Webhook<'_>,
        trace: &TraceParent,
    ) -> Result<WebhookResponse, IngestError> {
        let tenant_id = webhook.tenant_id;
        if tenant_id.is_empty() {
            return Err(IngestError::invalid("tenant_id", "is required"));
        }
        caller.admit("tenant_id", tenant_id, 0)?;
        let envelopes = channels::normalize(
            webhook.channel,
            tenant_id,
            webhook.payload,
            webhook.content_type,
            &self.config.webhook_limits,
            SystemTime::now(),
        )?;
        caller.admit(
            "tenant_id",
            tenant_id,
            u32::try_from(envelopes.len()).unwrap_or(u32::MAX),
        )?;
        // All or nothing at the edge: every envelope is validated and
        // holds a permit before any is handed to Kafka.
        let mut admitted = Vec::with_capacity(envelopes.len());
        for (i, envelope) in envelopes.into_iter().enumerate() {
            let envelope = validate::normalize(
                format_args!("payload[{i}]"),
                envelope,
                SystemTime::now(),
                self.config.max_clock_skew,
            )?;
            admitted.push((envelope, self.publisher.try_permit()?));
        }
        let pending = admitted
            .into_iter()
            .map(|(envelope, permit)| self.enqueue(envelope, trace.child(), permit))
            .collect::<Result<Vec<_>, _>>()?;
        let mut results = Vec::with_capacity(pending.len());
        for (i, p) in pending.into_iter().enumerate() {
            results.push(p.response(i as u64).await?);
        }
        Ok(WebhookResponse { results })
    }
}

/// A batch's same-conversation rule: once an envelope of a conversation
/// failed, the later ones of that conversation are not published. Holds at
/// most one entry per envelope of the batch.
#[derive(Default)]
struct ConversationGate {
    /// Conversation key → index of its first failed envelope.
    failed: HashMap<String, usize>,
}

impl ConversationGate {
    /// `ABORTED` if an earlier envelope of conversation `key` failed.
    fn check(&self, key: &str) -> Result<(), IngestError> {
        match self.failed.get(key) {
            Some(earlier) => Err(IngestError::Aborted {
                earlier: format!("envelopes[{earlier}]"),
            }),
            None => Ok(()),
        }
    }

    /// Envelope `index` of conversation `key` failed.
    fn failed(&mut self, key: String, index: usize) {
        self.failed.entry(key).or_insert(index);
    }
}

/// This hop's span and `traceparent`: a child of the caller's, or a new trace.
fn trace_of<T>(rpc: &'static str, request: &Request<T>) -> (tracing::Span, TraceParent) {
    trace::hop(
        rpc,
        request
            .metadata()
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok()),
    )
}

/// The Ingest RPCs, and the HTTP webhook listener, for the `rpc` label.
#[derive(Debug, Clone, Copy)]
enum Rpc {
    Publish,
    PublishStream,
    IngestWebhook,
    PublishBatch,
    HttpWebhook,
}

impl Rpc {
    const ALL: [Self; 5] = [
        Self::Publish,
        Self::PublishStream,
        Self::IngestWebhook,
        Self::PublishBatch,
        Self::HttpWebhook,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::PublishStream => "publish_stream",
            Self::IngestWebhook => "ingest_webhook",
            Self::PublishBatch => "publish_batch",
            Self::HttpWebhook => "http_webhook",
        }
    }
}

/// The `code` label values, indexed by [`code_index`].
const CODES: [&str; 9] = [
    "ok",
    "invalid_argument",
    "resource_exhausted",
    "unavailable",
    "failed_precondition",
    "unauthenticated",
    "permission_denied",
    "aborted",
    "other",
];

/// `code`'s place in [`CODES`].
fn code_index(code: tonic::Code) -> usize {
    match code {
        tonic::Code::Ok => 0,
        tonic::Code::InvalidArgument => 1,
        tonic::Code::ResourceExhausted => 2,
        tonic::Code::Unavailable => 3,
        tonic::Code::FailedPrecondition => 4,
        tonic::Code::Unauthenticated => 5,
        tonic::Code::PermissionDenied => 6,
        tonic::Code::Aborted => 7,
        _ => 8,
    }
}

/// `switchboard_ingest_requests_total` handles, one per RPC, channel and
/// status label, taken once: a request indexes its handle, looking nothing up.
struct RequestCounters(Vec<metrics::Counter>);

impl RequestCounters {
    fn new() -> Self {
        let mut counters = Vec::with_capacity(Rpc::ALL.len() * Channel::ALL.len() * CODES.len());
        for rpc in Rpc::ALL {
            for channel in Channel::ALL {
                for code in CODES {
                    counters.push(metrics::counter!(
                        "switchboard_ingest_requests_total",
                        "rpc" => rpc.label(),
                        "channel" => channel.slug(),
                        "code" => code
                    ));
                }
            }
        }
        Self(counters)
    }

    /// Counts `n` requests of `rpc` on `channel`, answered with `code`.
    fn count(&self, rpc: Rpc, channel: Channel, code: tonic::Code, n: u64) {
        // `Channel::ALL` is in value order, so a channel is its own index.
        let i =
            (rpc as usize * Channel::ALL.len() + channel as usize) * CODES.len() + code_index(code);
        self.0[i].increment(n);
    }

    fn record<T>(&self, rpc: Rpc, channel: Channel, result: &Result<T, IngestError>) {
        let code = result
            .as_ref()
            .map_or_else(IngestError::code, |_| tonic::Code::Ok);
        self.count(rpc, channel, code, 1);
    }

    /// Counts every envelope of a batch refused whole with `code` (one
    /// request on no channel when the batch is empty, so the refusal shows).
    fn refused(&self, rpc: Rpc, envelopes: &[Envelope], code: tonic::Code) {
        if envelopes.is_empty() {
            self.count(rpc, Channel::Unspecified, code, 1);
        }
        for envelope in envelopes {
            self.count(rpc, envelope.channel(), code, 1);
        }
    }
}

/// The channel an envelope names (unspecified when there is none).
fn channel_of(envelope: Option<&Envelope>) -> Channel {
    envelope.map_or(Channel::Unspecified, Envelope::channel)
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<PublishResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let (span, trace) = trace_of("ingest.publish", &request);
        let channel = channel_of(request.get_ref().envelope.as_ref());
        let result = async {
            let caller = self.auth.authenticate(request.metadata())?;
            let request = request.into_inner();
            let permit = self.publisher.try_permit()?;
            self.enqueue_request(&caller, request.envelope, trace, permit)?
                .response(request.sequence)
                .await
        }
        .instrument(span)
        .await;
        self.requests.record(Rpc::Publish, channel, &result);
        Ok(Response::new(result?))
    }

    type PublishStreamStream = ResponseStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let mut caller = self
            .auth
            .authenticate(request.metadata())
            .inspect_err(|e| {
                self.requests
                    .count(Rpc::PublishStream, Channel::Unspecified, e.code(), 1)
            })?;
        let (span, trace) = trace_of("ingest.publish_stream", &request);
        let mut inbound = request.into_inner();
        let limit = self.config.max_in_flight_per_stream;
        let (tx, rx) = mpsc::channel(limit);
        let service = self.clone();
        let mut reloads = self.auth.reloads();
        tokio::spawn(async move {
            let mut pending = FuturesUnordered::new();
            // A global in-flight permit is taken before a request is read, so
            // a saturated node stops reading and HTTP/2 flow control pushes
            // back on the client; the per-stream bound does the same.
            let mut permit = None;
            let mut open = true;
            // Why the node ends the stream, once what it accepted is answered.
            let mut ending: Option<Status> = None;
            while open || !pending.is_empty() {
                tokio::select! {
                    Some(done) = pending.next(), if !pending.is_empty() => {
                        if tx.send(Ok(done)).await.is_err() {
                            return; // the client went away
                        }
                    }
                    // The tenants file changed: the key may be gone.
                    Ok(()) = reloads.changed(), if open => match service.auth.recheck(&caller) {
                        Ok(current) => caller = current,
                        Err(e) => {
                            tracing::info!(error = %e, "ending a publish stream: its API key was revoked");
                            ending = Some(e.into());
                            open = false;
                        }
                    },
                    p = service.publisher.permit(), if open && permit.is_none() && pending.len() < limit => {
                        match p {
                            Ok(p) => permit = Some(p),
                            Err(_) => open = false,
                        }
                    }
                    next = inbound.message(), if open && permit.is_some() => match next {
                        Ok(Some(req)) => {
                            let sequence = req.sequence;
                            let channel = channel_of(req.envelope.as_ref());
                            let permit = permit.take().expect("guarded by the select condition");
                            let queued = service.enqueue_request(&caller, req.envelope, trace.child(), permit);
                            let requests = service.requests.clone();
                            pending.push(async move {
                                let result = match queued {
                                    Ok(queued) => queued.response(sequence).await,
                                    Err(e) => Err(e),
                                };
                                requests.record(Rpc::PublishStream, channel, &result);
                                result.unwrap_or_else(|e| PublishResponse {
                                    sequence,
                                    error: Some(e.to_detail()),
                                    ..Default::default()
                                })
                            });
                        }
                        Ok(None) => open = false,
                        Err(status) if status.code() == tonic::Code::OutOfRange => {
                            ending = Some(limits::too_large(service.config.max_request_bytes));
                            open = false;
                        }
                        Err(status) => {
                            tracing::debug!(%status, "publish stream ended by the client");
                            open = false;
                        }
                    },
                }
            }
            if let Some(status) = ending {
                let _ = tx.send(Err(status)).await;
            }
        }.instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ingest_webhook(
        &self,
        request: Request<WebhookRequest>,
    ) -> Result<Response<WebhookResponse>, Status> {
        let (span, trace) = trace_of("ingest.webhook", &request);
        let channel = Channel::try_from(request.get_ref().channel).unwrap_or(Channel::Unspecified);
        async {
            let caller = match self.auth.authenticate(request.metadata()) {
                Ok(caller) => caller,
                Err(e) => {
                    self.requests
                        .count(Rpc::IngestWebhook, channel, e.code(), 1);
                    return Err(e.into());
                }
            };
            let request = request.into_inner();
            let webhook = Webhook {
                tenant_id: &request.tenant_id,
                channel,
                payload: &request.payload,
                content_type: &request.content_type,
            };
            let response = self
                .publish_webhook(WebhookRoute::Grpc, &caller, webhook, &trace)
                .await?;
            Ok(Response::new(response))
        }
        .instrument(span)
        .await
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let (span, trace) = trace_of("ingest.publish_batch", &request);
        async {
            let refuse = |request: &PublishBatchRequest, e: IngestError| {
                self.requests
                    .refused(Rpc::PublishBatch, &request.envelopes, e.code());
                Err(Status::from(e))
            };
            let caller = match self.auth.authenticate(request.metadata()) {
                Ok(caller) => caller,
                Err(e) => return refuse(request.get_ref(), e),
            };
            let request = request.into_inner();
            if let Err(e) = self.check_batch(&request) {
                return refuse(&request, e);
            }
            let response = self
                .publish_envelopes(&caller, request.envelopes, &trace)
                .await;
            Ok(Response::new(response))
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_conversation_after_a_failure_is_aborted_naming_it() {
        let mut gate = ConversationGate::default();
        assert!(gate.check("acme/sms/a").is_ok());
        gate.failed("acme/sms/a".into(), 2);
        gate.failed("acme/sms/a".into(), 5); // the first failure is the one named
        let aborted = gate.check("acme/sms/a").unwrap_err();
        assert_eq!(aborted.code(), tonic::Code::Aborted);
        assert!(aborted.is_retryable());
        let detail = aborted.to_detail();
        assert_eq!(detail.code, tonic::Code::Aborted as i32);
        assert_eq!(detail.fields, ["envelopes[2]"]);
        assert!(
            detail.message.contains("envelopes[2]"),
            "{}",
            detail.message
        );
        assert!(gate.check("acme/sms/b").is_ok());
    }

    #[test]
    fn every_code_has_its_own_label() {
        use tonic::Code;
        let codes = [
            Code::Ok,
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::Unavailable,
            Code::FailedPrecondition,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Aborted,
        ];
        for (i, code) in codes.into_iter().enumerate() {
            assert_eq!(code_index(code), i);
        }
        assert_eq!(CODES[code_index(Code::Internal)], "other");
        assert_eq!(CODES[code_index(Code::Aborted)], "aborted");
    }
}
