//! Requests that other nodes send on to this one, which holds their SSE or long-polling
//! session (no sticky load balancer needed), and the answers to the polls this one sent on:
//! each handed to the transport it is for.

use std::sync::Arc;

use bytes::Bytes;

use super::Context;
use super::poll;
use super::posted::{self, Forwarded};

/// Hands what another node forwarded here to its transport.
pub(crate) fn forwarded(ctx: Arc<Context>, payload: Bytes) {
    let request = match serde_json::from_slice::<Forwarded>(&payload) {
        Ok(request) => request,
        Err(e) => {
            tracing::debug!(error = %e, "an unreadable request from another node");
            return;
        }
    };
    match request {
        Forwarded::Post {
            session,
            asker,
            body,
        } => posted::deliver_forwarded(&ctx, &session, &asker, body),
        Forwarded::Poll {
            session,
            asker,
            after,
            reply,
            token,
        } => {
            tokio::spawn(poll::answer_forwarded(
                ctx, session, asker, after, reply, token,
            ));
        }
        Forwarded::Polled {
            token,
            status,
            body,
        } => ctx.polled.answered(token, status, body),
    }
}
