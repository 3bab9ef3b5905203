//! The practical ceiling for `bench/run.sh`: a hello-world axum server with the same runtime,
//! HTTP stack and body handling as rollbackd (multi-threaded tokio, axum, the body read as bytes),
//! doing no work. `POST /v1/webhooks/alertmanager` answers 200 `{"accepted": 1}`.
//!
//! `cargo run --release --example hello_axum -- 127.0.0.1:0` prints `listening on http://ADDR`.

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;

async fn accept(body: Bytes) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"accepted": usize::from(!body.is_empty())}))
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        println!("listening on http://{}", listener.local_addr()?);
        let app = Router::new().route("/v1/webhooks/alertmanager", post(accept));
        axum::serve(listener, app).await
    })
}
