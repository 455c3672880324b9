//! modelgate's own answer to `GET /v1/models` (and `/v1/models/{id}`, and `HEAD` of
//! either) on an OpenAI endpoint.

use std::sync::Arc;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::{Gateway, Reject, RequestCtx};
use crate::openai::{models, RouteGroup};
use crate::routing::request_host;

impl Gateway {
    /// The OpenAI endpoint (a route group with `api = "openai"`) a model-list
    /// request is for, if any.
    pub(super) fn models_endpoint(&self, session: &Session) -> Option<Arc<RouteGroup>> {
        let req = session.req_header();
        models::asked(req)?;
        let snapshot = self.snapshot.load();
        snapshot
            .routes
            .resolve(&request_host(req), req.uri.path())
            .filter(|g| g.openai())
            .cloned()
    }

    /// Answers the model list of `group` (or one model of it, 404 `model_not_found`
    /// when it has no such model) after the endpoint's auth and rate limit (401/429
    /// as for any request): only models of routes whose `auth` the request passes
    /// are listed. `HEAD` gets the same head and no body.
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
        let req = session.req_header();
        let headers = &req.headers;
        let passed = ctx.gate_auth.as_deref();
        let reachable = |route: &crate::snapshot::RouteEntry| match route.edge.auth.as_deref() {
            None => true,
            Some(a) => {
                passed.is_some_and(|p| std::ptr::eq(p, a) || p.config == a.config)
                    || a.check.check(headers).is_ok()
            }
        };
        let body = match models::asked(req) {
            Some(models::Asked::One(id)) => models::one(group, reachable, loaded_at, id),
            _ => Some(models::list(group, reachable, loaded_at)),
        };
        let Some(body) = body else {
            return self.reject(session, ctx, Reject::ModelNotFound).await;
        };
        let head_only = req.method == http::Method::HEAD;
        let mut h = ResponseHeader::build(200, Some(4))?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        if let Some(id) = &ctx.request_id {
            h.insert_header(&super::X_REQUEST_ID, id.clone())?;
        }
        session
            .write_response_header(Box::new(h), head_only)
            .await?;
        if !head_only {
            session
                .write_response_body(Some(Bytes::from(body)), true)
                .await?;
        }
        Ok(true)
    }
}
