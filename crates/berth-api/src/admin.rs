//! The admin JSON API: cluster status and membership.
//!
//! It is served on the same port as the registry API. Until authentication lands,
//! expose that port only to trusted networks.

use axum::Json;
use axum::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use berth_cluster::MembershipChange;
use berth_meta::NodeInfo;
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
}

pub async fn add_node(State(state): State<AppState>, Json(req): Json<AddNode>) -> Result<Response, ApiError> {
    let change = MembershipChange::Add {
        id: req.id,
        info: NodeInfo {
            grpc_addr: req.grpc_addr,
            http_addr: req.http_addr,
        },
    };
    state.registry.change_membership(change).await?;
    Ok((StatusCode::OK, Json(state.registry.cluster_status().await)).into_response())
}

pub async fn remove_node(State(state): State<AppState>, Path(id): Path<u64>) -> Result<Response, ApiError> {
    state
        .registry
        .change_membership(MembershipChange::Remove { id })
        .await?;
    Ok((StatusCode::OK, Json(state.registry.cluster_status().await)).into_response())
}
