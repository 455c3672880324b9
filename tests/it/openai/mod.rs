//! The OpenAI front door: the mock OpenAI replica, routing by model, `/v1/models`,
//! token accounting from streams, streams kept alive while queued or held, `hold`
//! and `wake`.

mod accept;
mod bodies;
mod cold;
mod fixture;
mod keepalive;
mod mock;
mod models;
mod routing;
mod tokens;

pub use fixture::chat;
