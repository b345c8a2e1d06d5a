//! The admin JSON API: cluster status and membership, background workers.
//!
//! It is served on the same port as the registry API. Until authentication lands,
//! expose that port only to trusted networks.

use axum::Json;
use axum::extract::Path;
use axum::extract::Query;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use berth_registry::NewMember;
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiError;

pub async fn cluster_status(State(state): State<AppState>) -> Response {
    Json(state.registry.cluster_status().await).into_response()
}

#[derive(Deserialize)]
pub struct AddNode {
    pub id: u64,
    pub grpc_addr: String,
    #[serde(default)]
    pub http_addr: String,
    /// Make the change even when the voters would then not have a reachable
    /// majority.
    #[serde(default)]
    pub force: bool,
}

#[derive(Deserialize)]
pub struct RemoveNode {
    #[serde(default)]
    pub force: bool,
}

pub async fn add_node(State(state): State<AppState>, Json(req): Json<AddNode>) -> Result<Response, ApiError> {
    let member = NewMember {
        id: req.id,
        grpc_addr: req.grpc_addr,
        http_addr: req.http_addr,
        force: req.force,
    };
    state.registry.add_member(member).await?;
    Ok((StatusCode::OK, Json(state.registry.cluster_status().await)).into_response())
}

pub async fn remove_node(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    Query(query): Query<RemoveNode>,
) -> Result<Response, ApiError> {
    state.registry.remove_member(id, query.force).await?;
    Ok((StatusCode::OK, Json(state.registry.cluster_status().await)).into_response())
}

/// Every background worker of this node with its state, last step, last error and
/// progress counters.
pub async fn workers(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({ "workers": state.registry.workers().status() })).into_response()
}
