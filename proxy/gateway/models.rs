//! modelgate's own answer to `GET /v1/models` on an OpenAI endpoint.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::{Gateway, RequestCtx};
use crate::openai::{models, RouteGroup};
use crate::routing::request_host;

impl Gateway {
    /// The OpenAI endpoint (a route group with `api = "openai"`) a model-list
    /// request is for, if any.
    pub(super) fn models_endpoint(&self, session: &Session) -> Option<Arc<RouteGroup>> {
        let req = session.req_header();
        if !models::is_list_request(req) {
            return None;
        }
        let snapshot = self.snapshot.load();
        snapshot
            .routes
            .resolve(&request_host(req), req.uri.path())
            .filter(|g| g.openai())
            .cloned()
    }

    /// Answers the model list of `group` after the endpoint's auth and rate limit
    /// (401/429 as for any request): only models of routes whose `auth` the request
    /// passes are listed.
    pub(super) async fn answer_models(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        group: &RouteGroup,
    ) -> pingora::Result<bool> {
        ctx.openai = true;
        if let Some(r) = self.gate_check(session, ctx, group) {
            return self.reject(session, ctx, r).await;
        }
        let loaded_at = self
            .snapshot
            .load()
            .loaded_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let headers = &session.req_header().headers;
        let passed = ctx.gate_auth.as_deref();
        let body = models::list(
            group,
            |route| match route.edge.auth.as_deref() {
                None => true,
                Some(a) => {
                    passed.is_some_and(|p| std::ptr::eq(p, a) || p.config == a.config)
                        || a.check.check(headers).is_ok()
                }
            },
            loaded_at,
        );
        let mut h = ResponseHeader::build(200, Some(4))?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        if let Some(id) = &ctx.request_id {
            h.insert_header(super::X_REQUEST_ID, id.clone())?;
        }
        session.write_response_header(Box::new(h), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
        Ok(true)
    }
}
