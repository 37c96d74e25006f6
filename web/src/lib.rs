//! Placeholder until the pages land: serves nothing.
pub fn router() -> axum::Router {
    axum::Router::new()
}
