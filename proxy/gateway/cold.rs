//! Requests that find no ready replica (all `unknown` while loading, or down):
//! `wake` is called once per cold period (a failed call again, with backoff) and, with `hold`, the request waits in
//! the upstream's queue for a replica to come up instead of a 503 at once (a held
//! stream gets SSE keep-alives, as a queued one does).

use std::time::Duration;

use pingora::proxy::Session;

use super::{client_gone, keepalive, Gateway, RequestCtx};
use crate::upstream::{Admission, Pool};

impl Gateway {
    /// What a request gets when its upstream has no ready replica. A stream on a
    /// route with `sse_keepalive` (`keepalive`) is kept alive while held.
    pub(super) async fn cold_start(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        pool: &Pool,
        keepalive: Option<Duration>,
    ) -> Admission {
        let settings = pool.settings();
        if let Some(wake) = &settings.wake {
            let queue = pool.store().queue();
            if let Some(period) = queue.cold().wake_due() {
                crate::health::wake::spawn(
                    std::sync::Arc::clone(pool.name()),
                    wake.clone(),
                    std::sync::Arc::clone(&self.metrics),
                    std::sync::Arc::clone(queue),
                    period,
                );
            }
        }
        let Some(hold) = settings.hold else {
            return Admission::NoneHealthy;
        };
        match keepalive {
            Some(every) => {
                let held = pool.hold(
                    hold,
                    &ctx.tried,
                    ctx.ticket,
                    ctx.hash,
                    std::future::pending(),
                );
                let id = ctx.request_id.as_ref();
                keepalive::wait(session, &mut ctx.early_head, id, every, held).await
            }
            None => {
                pool.hold(hold, &ctx.tried, ctx.ticket, ctx.hash, client_gone(session))
                    .await
            }
        }
    }
}
