//! The built-in demo bot: answers every text message with an echo of it,
//! and hands the conversation to a human when the customer asks for an
//! "operator".

use std::time::SystemTime;

use switchboard_proto::v1::{
    BotRequest, BotResponse, Direction, Envelope, Text,
    bot_server::{Bot, BotServer},
    envelope::Content,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// Echoes text back to the customer as an outbound reply.
#[derive(Debug, Default, Clone)]
pub struct EchoBot;

#[tonic::async_trait]
impl Bot for EchoBot {
    async fn handle(&self, request: Request<BotRequest>) -> Result<Response<BotResponse>, Status> {
        let envelope = request
            .into_inner()
            .envelope
            .ok_or_else(|| Status::invalid_argument("envelope is required"))?;
        let handoff = matches!(&envelope.content,
            Some(Content::Text(t)) if t.body.to_lowercase().contains("operator"));
        let body = match &envelope.content {
            Some(Content::Text(_)) if handoff => "connecting you to a person".to_owned(),
            Some(Content::Text(t)) => format!("echo: {}", t.body),
            Some(other) => format!("echo: got a {} message", other.kind()),
            None => return Err(Status::invalid_argument("envelope.content is required")),
        };
        tracing::info!(tenant = %envelope.tenant_id, channel = envelope.channel().slug(), "demo bot replied");
        let reply = Envelope {
            tenant_id: envelope.tenant_id.clone(),
            channel: envelope.channel,
            direction: Direction::Outbound as i32,
            conversation_id: envelope.conversation_id.clone(),
            customer: envelope.customer.clone(),
            business: envelope.business.clone(),
            sent_at: Some(switchboard_proto::timestamp(SystemTime::now())),
            content: Some(Content::Text(Text { body })),
            reply_to: envelope.channel_message_id,
            ..Default::default()
        };
        Ok(Response::new(BotResponse {
            replies: vec![reply],
            handoff,
            // The workers' default handoff queue.
            handoff_queue: String::new(),
        }))
    }
}

/// Serves `bot` on `listener` until `shutdown` completes.
pub async fn serve<B: Bot>(
    bot: B,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(BotServer::new(bot))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
