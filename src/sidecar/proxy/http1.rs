//! HTTP/1.1 to the upstream: a pool of keep-alive connections per worker.
//!
//! A connection is lent to one request and comes back to the pool when that request's response body has
//! been read to its end or dropped ([`Loan`]). This does what a general client pool does, minus what a
//! sidecar with one upstream and one thread per pool does not need (keyed lookups, cross-thread locking, a
//! task per request to watch the connection become ready again), which measured as most of the forwarding
//! path's CPU.

use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use super::{ForwardError, connect, drive};
use crate::sidecar::body::RequestBody;

/// Idle connections kept per worker; more are closed when their request ends.
const MAX_IDLE: usize = 512;

type Idle = Arc<Mutex<Vec<SendRequest<RequestBody>>>>;

/// One worker's idle connections.
#[derive(Clone, Default)]
pub struct Pool {
    idle: Idle,
}

/// A connection lent to one request; it goes back to the pool when dropped (with the response body).
pub struct Loan {
    idle: Idle,
    sender: Option<SendRequest<RequestBody>>,
}

impl Drop for Loan {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take().filter(|s| !s.is_closed()) {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(sender);
            }
        }
    }
}

impl Pool {
    /// Sends on an idle connection, or a new one. A request that an idle connection could not take (the
    /// upstream closed it meanwhile) is sent again on a new connection: it never reached the upstream.
    pub async fn send(
        &self,
        authority: &str,
        request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Loan), ForwardError> {
        let mut request = request;
        while let Some(mut sender) = self.take_idle() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, self.loan(sender))),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(error.into_error().into()),
                },
            }
        }
        let mut sender = self.open(authority).await?;
        match sender.send_request(request).await {
            Ok(response) => Ok((response, self.loan(sender))),
            Err(e) => Err(e.into()),
        }
    }

    fn take_idle(&self) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn loan(&self, sender: SendRequest<RequestBody>) -> Loan {
        Loan {
            idle: self.idle.clone(),
            sender: Some(sender),
        }
    }

    async fn open(&self, authority: &str) -> Result<SendRequest<RequestBody>, ForwardError> {
        let stream = connect(authority).await?;
        let (mut sender, connection) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
        drive(connection);
        sender.ready().await?;
        Ok(sender)
    }
}
