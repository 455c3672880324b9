//! Requests that find no ready replica (all `unknown` while loading, or down):
//! `wake` is called once per cold period and, with `hold`, the request waits in
//! the upstream's queue for a replica to come up instead of a 503 at once.

use pingora::proxy::Session;

use super::{client_gone, Gateway, RequestCtx};
use crate::upstream::{Admission, Pool};

impl Gateway {
    /// What a request gets when its upstream has no ready replica.
    pub(super) async fn cold_start(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        pool: &Pool,
    ) -> Admission {
        let settings = pool.settings();
        if let Some(wake) = &settings.wake {
            if pool.store().queue().begin_cold() {
                crate::health::wake::spawn(
                    std::sync::Arc::clone(pool.name()),
                    wake.clone(),
                    std::sync::Arc::clone(&self.metrics),
                );
            }
        }
        match settings.hold {
            Some(hold) => {
                pool.hold(hold, &ctx.tried, ctx.ticket, ctx.hash, client_gone(session))
                    .await
            }
            None => Admission::NoneHealthy,
        }
    }
}
